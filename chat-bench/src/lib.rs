//! Load generator and delivery checker for Shardchat (the `chat-bench`
//! binary). One module per job:
//!
//! * [`args`]: command line;
//! * [`plan`]: which connection goes to which node and channel, who
//!   publishes, when each publish is due;
//! * [`client`]: one connection (connect, join, publish, classify frames);
//! * [`tracker`]: lost / duplicated / out-of-order accounting;
//! * [`meta`]: the bench stamp carried in every published message;
//! * [`latency`]: the shared HDR histograms;
//! * [`run`]: orchestration of a run;
//! * [`summary`]: figures and verdict (also the `--json` schema);
//! * [`report`]: table and JSON rendering;
//! * [`fdlimit`]: open-files pre-flight check;
//! * [`flood`]: abusive clients for flood-isolation runs.

pub mod args;
pub mod client;
pub mod fdlimit;
pub mod flood;
pub mod latency;
pub mod meta;
pub mod plan;
pub mod report;
pub mod run;
pub mod summary;
pub mod tracker;

//! Moderation: the word filter's corpus (English and Korean, evasions and
//! false positives), word-list reloads, and the external moderation
//! service over real gRPC (a tonic server in this process): verdicts,
//! timeouts, retries, the circuit breaker opening and closing again, and
//! both fail-open and fail-closed.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_node::Config;
use chat_node::moderation::service::pb::moderation_server::{Moderation, ModerationServer};
use chat_node::moderation::service::pb::{CheckRequest, CheckResponse, Verdict};
use chat_node::moderation::{Moderator, WordFilter};
use clap::Parser;
use serde_json::json;
use shardchat_common::ModerationMode;
use shardchat_common::protocol::ErrorCode;
use support::TestNode;
use tonic::{Request, Response, Status};

// ---------------------------------------------------------------------------
// Word filter corpus

/// Messages the built-in list must flag, with what masking leaves.
const FLAGGED: &[(&str, &str)] = &[
    // English: plain, case, inflections, compounds.
    ("fuck", "****"),
    ("what the FUCK is this", "what the **** is this"),
    ("you motherfucker!", "you ************!"),
    ("stop being an asshole.", "stop being an *******."),
    ("shit, I lagged", "****, I lagged"),
    ("bullshit call ref", "******** call ref"),
    ("fucking noob", "******* noob"),
    // Spacing and punctuation tricks.
    ("f u c k you", "* * * * you"),
    ("F.U.C.K", "*******"),
    ("f-u-c-k off", "******* off"),
    ("s h i t", "* * * *"),
    ("sh.it happens", "***** happens"),
    ("gg b.i.t.c.h", "gg *********"),
    // Repeated letters.
    ("fuuuuuck", "********"),
    ("shiiiiit", "********"),
    // Leetspeak.
    ("sh1t", "****"),
    ("$hit", "****"),
    ("a$$hole", "*******"),
    ("b1tch please", "***** please"),
    ("sh!t", "****"),
    // Unicode: fullwidth, math letters, accents, look-alikes, invisible characters.
    ("ＦＵＣＫ", "****"),
    ("𝐟𝐮𝐜𝐤", "****"),
    ("fück", "****"),
    ("fu\u{0301}ck", "*****"),
    ("fu\u{200B}ck", "*****"),
    ("f\u{00AD}u\u{2060}c\u{FEFF}k", "*******"),
    ("fuсk", "****"), // Cyrillic с
    ("ѕhit", "****"), // Cyrillic ѕ
    ("ſhit", "****"), // long s
    // Korean: plain, with particles, spaced, punctuated, noise, jamo.
    ("씨발", "**"),
    ("아 씨발 진짜", "아 ** 진짜"),
    ("씨발놈아 꺼져", "**** 꺼져"),
    ("병신이냐", "****"),
    ("개새끼들", "****"),
    ("씨 발", "* *"),
    ("씨.발", "***"),
    ("시1발", "***"),
    ("씨bal 씨발", "씨bal **"),
    ("ㅅㅂ 뭐야", "** 뭐야"),
    ("ㅅㅣㅂㅏㄹ", "*****"),
    ("ｼ발 fuck이야", "ｼ발 ****이야"),
    ("지랄하네", "****"),
    ("존나 못하네", "** 못하네"),
];

/// Messages the built-in list must leave alone (the Scunthorpe problem).
const INNOCENT: &[&str] = &[
    "Scunthorpe United won",
    "I live in Penistone near Sussex",
    "classic bass passage",
    "the assassin has a compass",
    "shitake and shiitake mushrooms",
    "cocktail in the cockpit",
    "a cockroach in Dickens' house",
    "therapist analysis",
    "bitcoin is up",
    "grape hello assess",
    "fire retardant coating",
    "shift happens",
    "1 2 3 4 5 go go go",
    "2024 is 1337 and 455",
    "it's a lot of class! glass? brass.",
    "as is, a s l",
    "a b c d e f g",
    "e.g. U.S.A. i.e. ok",
    "mail me at ann@example.com",
    "wait!! that was $5 and 100%",
    // Korean innocents, including words that start with a flagged one.
    "여기가 시발점이야",
    "시발역에서 만나",
    "우리집 시바견 귀여워",
    "껌을 씹다가",
    "신제품 출시 발표",
    "병원 신관",
    "개새로운 스킨",
    "새끼 고양이",
    "미친 듯이 달려",
    "ㅋㅋㅋㅋ ㅎㅎ",
    "지금 시 발표 중이야",
];

#[test]
fn corpus_flags_evasions_in_english_and_korean() {
    let f = WordFilter::builtin();
    let mut failures = Vec::new();
    for &(input, want) in FLAGGED {
        let got = f.apply(ModerationMode::Mask, input.to_string()).unwrap();
        if got != want {
            failures.push(format!("{input:?}: got {got:?}, want {want:?}"));
        }
        if f.apply(ModerationMode::Reject, input.to_string()).map_err(|e| e.code) != Err(ErrorCode::Filtered)
        {
            failures.push(format!("{input:?}: not rejected"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn corpus_leaves_innocent_text_alone() {
    let f = WordFilter::builtin();
    let flagged: Vec<String> = INNOCENT
        .iter()
        .filter(|t| f.is_flagged(t))
        .map(|t| format!("{t:?} -> {:?}", f.apply(ModerationMode::Mask, t.to_string()).unwrap()))
        .collect();
    assert!(flagged.is_empty(), "false positives:\n{}", flagged.join("\n"));
}

#[test]
fn filter_never_panics_on_odd_input() {
    let f = WordFilter::builtin();
    let odd = [
        String::new(),
        " ".repeat(2000),
        "\u{200B}".repeat(500),
        "\u{0301}".repeat(100),
        "ㅅ".repeat(1000),
        "ᄉ\u{1175}".repeat(300),
        "a ".repeat(1000),
        "$!|+@".repeat(300),
        "f.".repeat(1000),
        "\u{FDFA}\u{FB01}\u{2163}\u{3250}".into(),
        "\r\n\t".repeat(100),
    ];
    for t in odd {
        let out = f.apply(ModerationMode::Mask, t.clone()).unwrap();
        assert!(out.chars().count() <= t.chars().count() * 2);
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardchat-mod-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn word_list_file_is_reloaded_on_change() {
    let dir = temp_dir("reload");
    let file = dir.join("words.txt");
    std::fs::write(&file, "grief*\n").unwrap();
    let config = Config::parse_from(["chat-node", "--moderation-words", file.to_str().unwrap()]);
    let m = Moderator::from_config(&config, &prometheus::Registry::new()).unwrap();
    assert!(m.filter().is_flagged("griefer") && !m.filter().is_flagged("fuck"));
    assert!(!m.reload_if_changed());
    std::fs::write(&file, "%defaults\nnoob\n# comment\n").unwrap();
    assert!(m.reload_if_changed());
    assert!(
        m.filter().is_flagged("fuck") && m.filter().is_flagged("n00b") && !m.filter().is_flagged("griefer")
    );
    std::fs::remove_file(&file).unwrap();
    assert!(!m.reload_if_changed(), "a missing file keeps the list in force");
    assert!(m.filter().is_flagged("noob"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn channel_modes_over_the_wire() {
    let dir = temp_dir("modes");
    let channels = dir.join("channels.yaml");
    std::fs::write(&channels, "- name: strict\n  moderation: reject\n- name: free\n  moderation: off\n")
        .unwrap();
    let node = TestNode::start(&["--channels", channels.to_str().unwrap()]).await;
    let mut c = node.connect("alice").await;
    for ch in ["strict", "free", "town"] {
        c.join(ch).await;
    }
    assert_eq!(c.error_code(json!({"op":"publish","channel":"strict","text":"f u c k"})).await, "filtered");
    c.publish("free", "f u c k").await;
    assert_eq!(c.next_op("message").await["text"], "f u c k");
    c.publish("town", "아 씨발 gg").await;
    assert_eq!(c.next_op("message").await["text"], "아 ** gg");
    c.publish("town", "시발점에서 gg").await;
    assert_eq!(c.next_op("message").await["text"], "시발점에서 gg");
    node.wait_for_metric("shardchat_moderation_decisions_total{decision=\"rejected\"} 1").await;
    node.wait_for_metric("shardchat_moderation_decisions_total{decision=\"masked\"} 1").await;
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------
// External moderation service

#[derive(Clone, Debug)]
enum Behaviour {
    Allow,
    /// Answers MASK with the text upper-cased.
    Shout,
    Reject,
    Fail,
    Slow(Duration),
}

#[derive(Clone)]
struct FakeService {
    behaviour: Arc<Mutex<Behaviour>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Moderation for FakeService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        let behaviour = self.behaviour.lock().unwrap().clone();
        let answer = |verdict: Verdict, text: String| {
            Ok(Response::new(CheckResponse { verdict: verdict as i32, text, reason: String::new() }))
        };
        match behaviour {
            Behaviour::Allow => answer(Verdict::Allow, String::new()),
            Behaviour::Shout => answer(Verdict::Mask, req.text.to_uppercase()),
            Behaviour::Reject => answer(Verdict::Reject, String::new()),
            Behaviour::Fail => Err(Status::internal("model crashed")),
            Behaviour::Slow(d) => {
                tokio::time::sleep(d).await;
                answer(Verdict::Allow, String::new())
            }
        }
    }
}

impl FakeService {
    /// Serves on a loopback port; returns the service and its URL.
    async fn start(behaviour: Behaviour) -> (FakeService, String) {
        let svc = FakeService { behaviour: Arc::new(Mutex::new(behaviour)), calls: Arc::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder().add_service(ModerationServer::new(svc.clone()));
        tokio::spawn(server.serve_with_incoming(incoming));
        (svc, url)
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn moderator(url: &str, extra: &[&str]) -> (Moderator, prometheus::Registry) {
    let mut args = vec!["chat-node", "--moderation-service", url];
    args.extend_from_slice(extra);
    let registry = prometheus::Registry::new();
    (Moderator::from_config(&Config::parse_from(args), &registry).unwrap(), registry)
}

async fn moderate(m: &Moderator, text: &str) -> Result<String, ErrorCode> {
    m.moderate(ModerationMode::Mask, "town-1", "alice", text.to_string()).await.map_err(|e| e.code)
}

fn counter(m: &Moderator, result: &str) -> u64 {
    m.metrics.service.calls.with_label_values(&[result]).get()
}

fn decisions(m: &Moderator, d: &str) -> u64 {
    m.metrics.decisions.with_label_values(&[d]).get()
}

#[tokio::test]
async fn service_verdicts_allow_mask_reject() {
    let (svc, url) = FakeService::start(Behaviour::Allow).await;
    let (m, _) = moderator(&url, &[]);
    assert_eq!(moderate(&m, "hello shit").await, Ok("hello ****".into()), "the word filter runs first");
    svc.set(Behaviour::Shout);
    assert_eq!(moderate(&m, "hello").await, Ok("HELLO".into()));
    svc.set(Behaviour::Reject);
    assert_eq!(moderate(&m, "hello").await, Err(ErrorCode::Filtered));
    assert_eq!(svc.calls(), 3);
    assert_eq!((decisions(&m, "allowed"), decisions(&m, "masked"), decisions(&m, "rejected")), (0, 2, 1));
    // Off channels skip the whole pipeline.
    let off = m.moderate(ModerationMode::Off, "c", "u", "shit".into()).await;
    assert_eq!(off.unwrap(), "shit");
    assert_eq!(svc.calls(), 3);
}

#[tokio::test]
async fn slow_service_times_out_within_the_bound() {
    let (svc, url) = FakeService::start(Behaviour::Slow(Duration::from_secs(5))).await;
    let flags =
        ["--moderation-timeout", "100ms", "--moderation-retries", "1", "--moderation-backoff", "10ms"];
    let (m, _) = moderator(&url, &flags);
    let started = std::time::Instant::now();
    assert_eq!(moderate(&m, "hello").await, Err(ErrorCode::Unavailable), "fail-closed by default");
    // Bound: 2 × 100 ms + 10 ms; generous margin for a loaded machine, far below the 5 s answer.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(counter(&m, "timeout"), 2, "one call and one retry");
    assert_eq!(decisions(&m, "unavailable"), 1);
    assert!(svc.calls() >= 1);
}

#[tokio::test]
async fn failing_service_retries_then_the_breaker_opens_then_closes_on_recovery() {
    let (svc, url) = FakeService::start(Behaviour::Fail).await;
    let flags = [
        "--moderation-retries",
        "2",
        "--moderation-backoff",
        "1ms",
        "--moderation-breaker-failures",
        "3",
        "--moderation-breaker-open",
        "1s",
        "--moderation-timeout",
        "2s",
    ];
    let (m, _) = moderator(&url, &flags);
    // First message: 1 call + 2 retries, all failing: the breaker opens.
    assert_eq!(moderate(&m, "one").await, Err(ErrorCode::Unavailable));
    assert_eq!(svc.calls(), 3);
    assert_eq!(counter(&m, "error"), 3);
    assert_eq!(m.metrics.service.breaker_state.get(), 1, "open");
    assert_eq!(m.metrics.service.breaker_opened.get(), 1);
    // While open, the service is not called at all.
    assert_eq!(moderate(&m, "two").await, Err(ErrorCode::Unavailable));
    assert_eq!(svc.calls(), 3);
    assert_eq!(counter(&m, "breaker_open"), 1);

    // The service recovers; after the open period a probe closes the breaker.
    svc.set(Behaviour::Allow);
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    loop {
        match moderate(&m, "three").await {
            Ok(t) => {
                assert_eq!(t, "three");
                break;
            }
            Err(code) => assert_eq!(code, ErrorCode::Unavailable),
        }
        assert!(std::time::Instant::now() < deadline, "breaker never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.metrics.service.breaker_state.get(), 0, "closed again");
    assert_eq!(svc.calls(), 4, "exactly one probe reached the service");
    assert_eq!(moderate(&m, "four").await, Ok("four".into()));
}

#[tokio::test]
async fn fail_open_delivers_with_the_word_filter_only() {
    let (svc, url) = FakeService::start(Behaviour::Fail).await;
    let flags = [
        "--moderation-fail-open",
        "--moderation-retries",
        "0",
        "--moderation-breaker-failures",
        "2",
        "--moderation-breaker-open",
        "1m",
    ];
    let (m, _) = moderator(&url, &flags);
    assert_eq!(moderate(&m, "gg shit").await, Ok("gg ****".into()));
    assert_eq!(moderate(&m, "gg").await, Ok("gg".into()));
    // Breaker open now: still delivered, without calling the service.
    assert_eq!(moderate(&m, "gg again").await, Ok("gg again".into()));
    assert_eq!(svc.calls(), 2);
    assert_eq!(m.metrics.failed_open.get(), 3);
    assert_eq!(counter(&m, "breaker_open"), 1);
    // The filter's own rejections still apply in reject channels.
    let r = m.moderate(ModerationMode::Reject, "c", "u", "shit".into()).await;
    assert_eq!(r.unwrap_err().code, ErrorCode::Filtered);
}

#[tokio::test]
async fn service_down_at_start_and_fail_closed_over_the_wire() {
    // Nothing listens on this port: connection refused on every call.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let node = TestNode::start(&["--moderation-service", &url, "--moderation-retries", "1"]).await;
    let mut c = node.connect("alice").await;
    c.join("town-1").await;
    let reply = c.request(json!({"op":"publish","channel":"town-1","text":"hello"})).await;
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    node.wait_for_metric("shardchat_moderation_service_calls_total{result=\"error\"} 2").await;
    node.wait_for_metric("shardchat_moderation_decisions_total{decision=\"unavailable\"} 1").await;
}

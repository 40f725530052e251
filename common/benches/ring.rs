//! `cargo bench -p shardchat-common --bench ring`: ring lookups and builds.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shardchat_common::{DEFAULT_VNODES, Ring};

fn nodes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("chat-node-{i}")).collect()
}

fn owner(c: &mut Criterion) {
    let channels: Vec<String> = (0..1024).map(|i| format!("town-{i}")).collect();
    for n in [3, 32] {
        let ring = Ring::new(1, DEFAULT_VNODES, nodes(n)).expect("valid ring");
        let mut i = 0;
        c.bench_function(&format!("owner/{n}-nodes/{DEFAULT_VNODES}-vnodes"), |b| {
            b.iter(|| {
                i = (i + 1) % channels.len();
                black_box(ring.owner(black_box(&channels[i])))
            })
        });
    }
}

fn build(c: &mut Criterion) {
    let members = nodes(32);
    c.bench_function(&format!("new/32-nodes/{DEFAULT_VNODES}-vnodes"), |b| {
        b.iter(|| Ring::new(1, DEFAULT_VNODES, black_box(&members).iter().cloned()))
    });
}

criterion_group!(benches, owner, build);
criterion_main!(benches);

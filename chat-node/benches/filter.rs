//! Word-filter cost per message (the owner runs it on every publish).
//! `cargo bench -p chat-node --bench filter`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use chat_node::moderation::WordFilter;
use shardchat_common::ModerationMode;

fn filter(c: &mut Criterion) {
    let f = WordFilter::builtin();
    let samples = [
        ("short english", "gg wp, that was close! see you next round".to_string()),
        ("short korean", "아 진짜 오늘 랭겜 너무 힘들다 ㅋㅋㅋ 다음 판 가자".to_string()),
        ("2000 chars, many hits", "hello fuck 씨발 f.u.c.k 시발점 ".repeat(80).chars().take(2000).collect()),
        ("2000 x", "x".repeat(2000)),
    ];
    let mut group = c.benchmark_group("word_filter_mask");
    for (name, text) in samples {
        group.bench_function(name, |b| b.iter(|| f.apply(ModerationMode::Mask, black_box(text.clone()))));
    }
    group.finish();
}

criterion_group!(benches, filter);
criterion_main!(benches);

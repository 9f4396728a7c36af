//! Criterion benchmarks live in `benches/benches/`; see README.md.

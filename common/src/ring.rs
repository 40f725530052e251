//! Consistent hash ring (to be written: see docs/architecture.md).

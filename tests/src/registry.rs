//! Registry harness (being written).

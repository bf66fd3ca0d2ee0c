//! Step executor (being written).

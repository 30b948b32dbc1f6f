//! Provider rate-limit and retry headers (being written).

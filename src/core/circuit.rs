//! Circuit state per upstream cluster (being written).

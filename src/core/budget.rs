//! Session and tenant budgets (being written).

//! `Bastion`: a host through which people reach a Stack's Database.

mod reconcile;

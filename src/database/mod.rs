//! `Database`: PostgreSQL on RDS in the private side of a Stack.

mod reconcile;

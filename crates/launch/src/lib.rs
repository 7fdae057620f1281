//! huddle-launch: starts the ranks of a job, on this machine or on the hosts
//! of a hostfile, with the environment contract that huddle-comm reads.
//!
//! The launcher must stay nearly idle while ranks run, never leave a process
//! behind, and never exit 0 when a rank failed.

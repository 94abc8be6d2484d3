//! The study's analyses from armsrace results: the transforms and fits of its figures
//! ([`fit`]). The results table, the figures and `armsrace report` build on it (issue 13).

pub mod fit;

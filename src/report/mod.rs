//! The study's analyses and figures from armsrace results: one tidy table ([`table`]) read
//! from results directories or a table file, fits ([`fit`]), and figures ([`draw`]).

pub mod draw;
pub mod fit;
pub mod table;

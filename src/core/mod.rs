//! The core: the state document and the rules of the semaphore, with no I/O.

pub(crate) mod doc;
pub(crate) mod json;
pub(crate) mod queue;
pub(crate) mod rules;
pub(crate) mod tokens;
pub(crate) mod verdict;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod parse_tests;

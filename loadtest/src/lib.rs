pub mod event;
pub mod load;
pub mod mock;

mod events;
mod projections;

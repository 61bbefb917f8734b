mod email;
mod events;

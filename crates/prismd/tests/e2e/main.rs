//! End-to-end tests: every test starts a real `prismd` process on a free port with its own
//! data directory and talks HTTP to it (plus `curl`, `jq` and `bash` for the seed's lines).

mod admin;
mod attack_battery;
mod audit;
mod cleanup;
mod crash;
mod device;
mod errors;
mod faults;
mod first_start_race;
mod flows;
mod graphql;
mod harness;
mod identities;
mod jwt_attacks;
mod keys;
mod keys_at_rest;
mod limits;
mod login;
mod mail;
mod mail_flows;
mod metrics;
mod official_cli;
mod ops;
mod outage;
mod policies;
mod postgres;
mod replicas;
mod seed;
mod sessions;
mod smtp;
mod tls;
mod upgrade;

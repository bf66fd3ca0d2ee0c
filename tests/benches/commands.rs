//! `just bench commands`: what proving a command's sender adds to each command, measured step by
//! step as the promoter does it ([`baton_promoter`]'s identity module): parsing `people.yaml`
//! with 20 people, parsing their keys, verifying the SSHSIG signature over a command body, and
//! spending the nonce (a create in the `baton-handled` bucket of a real nats-server). Each
//! step's p50 over 500 commands, and their sum.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::Result;
use baton_kit::signing;
use baton_schemas::commands::CommandRequest;
use baton_schemas::people::PeopleFile;
use baton_tests::people::{Person, people_yaml};
use baton_tests::percentile;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COMMANDS: usize = 500;

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 0.5)
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let nats = baton_tests::NatsServer::start()?;
    let people: Vec<Person> = (0..20).map(|i| Person::new(&format!("person{i}"))).collect();
    let yaml = people_yaml(&people.iter().map(Person::entry).collect::<Vec<_>>());
    let signer = &people[7];
    runtime.block_on(async {
        let topology = nats.topology().await?;
        let (mut parse, mut keys, mut verify, mut nonce) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..COMMANDS {
            let (body, header) = signer.sign(CommandRequest {
                actor: signer.name.clone(),
                release: Some(format!("release-{i}")),
                environment: Some("production".into()),
                ..CommandRequest::default()
            })?;
            let started = Instant::now();
            let file = PeopleFile::parse(&yaml)?;
            parse.push(started.elapsed());
            let started = Instant::now();
            let listed: Vec<_> = file
                .people
                .values()
                .flat_map(|p| p.keys.iter())
                .filter_map(|line| signing::parse_authorized_key(line).ok())
                .collect();
            keys.push(started.elapsed());
            let started = Instant::now();
            signing::verify(&body, &header, &listed)?;
            verify.push(started.elapsed());
            let started = Instant::now();
            topology
                .handled
                .create(format!("promoter.nonce.bench{i}"), "x".into())
                .await?;
            nonce.push(started.elapsed());
        }
        let (parse, keys, verify, nonce) = (p50(parse), p50(keys), p50(verify), p50(nonce));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("commands: proving the sender of {COMMANDS} signed commands, p50 per command");
        println!("  people.yaml with 20 people parsed   {:>7.3} ms", ms(parse));
        println!("  their 20 keys parsed                {:>7.3} ms", ms(keys));
        println!("  SSHSIG (ed25519) verified           {:>7.3} ms", ms(verify));
        println!("  nonce spent (KV create, round trip) {:>7.3} ms", ms(nonce));
        println!(
            "  together                            {:>7.3} ms (target <= 1 ms)",
            ms(parse + keys + verify + nonce)
        );
        Ok(())
    })
}

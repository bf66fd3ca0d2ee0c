//! `baton policy show`: who may do what, per environment, as the promoter judges it. For every
//! environment of an `environments.yaml` and every verb its `grants` can give
//! ([`GrantedVerb::ALL`]), it prints who holds the verb and where that comes from: the file's
//! `grants`, or a default ([`EnvironmentsFile::grantees`], the promoter's own rule), so no
//! default is hidden.
//!
//! It reads the file, not the promoter: the promoter reads `environments.yaml` at the config
//! repo's head, so run it in an up-to-date clone of the config repo (`git pull` first), or name
//! the file with `--file`. Groups are printed by name: their members are the file's `groups`,
//! and people whose `groups` in `people.yaml` name them.

use std::path::Path;

use baton_schemas::environments::{EnvironmentsFile, GrantedVerb, Grantees};
use serde_json::{Value, json};

use crate::CliError;
use crate::cli::Output;
use crate::render::{self, Style};

/// Prints the grants of the environments file at `file`.
///
/// # Errors
/// [`CliError::Usage`] when the file cannot be read, [`CliError::Config`] when it is invalid
/// (the field and line at fault, as the promoter would refuse it).
pub fn show(file: &Path, style: Style) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        CliError::Usage(format!(
            "cannot read {} ({e}): run `baton policy show` in a clone of the config repo, or pass --file PATH",
            file.display()
        ))
    })?;
    let environments =
        EnvironmentsFile::parse(&text).map_err(|e| CliError::Config(format!("{e} (in {})", file.display())))?;
    let rows = rows(&environments);
    match style.output {
        Output::Json | Output::Yaml => {
            let doc: Vec<Value> = rows
                .iter()
                .map(|(env, verb, grantees)| {
                    json!({
                        "environment": env,
                        "verb": verb.as_str(),
                        "users": grantees.users,
                        "groups": grantees.groups,
                        "everyone": grantees.everyone,
                        "source": grantees.source,
                    })
                })
                .collect();
            println!("{}", render::document(style.output, &doc));
        }
        Output::Human | Output::Wide => {
            let mut table = vec![vec![
                "ENVIRONMENT".to_owned(),
                "VERB".to_owned(),
                "WHO".to_owned(),
                "FROM".to_owned(),
            ]];
            for (env, verb, grantees) in &rows {
                table.push(vec![
                    env.clone(),
                    verb.as_str().to_owned(),
                    who(grantees),
                    grantees.source.to_owned(),
                ]);
            }
            print!("{}", render::table(&table));
        }
    }
    Ok(())
}

/// One row per environment (in the file's order) and verb (in [`GrantedVerb::ALL`]'s).
fn rows(environments: &EnvironmentsFile) -> Vec<(String, GrantedVerb, Grantees)> {
    environments
        .environments
        .iter()
        .flat_map(|env| {
            GrantedVerb::ALL
                .iter()
                .map(move |verb| (env.name.clone(), *verb, environments.grantees(env, *verb)))
        })
        .collect()
}

/// Who holds a verb, for people: names, then groups, or everyone (a grant naming nobody is
/// refused when the file is read).
fn who(grantees: &Grantees) -> String {
    if grantees.everyone {
        return "everyone in people.yaml".to_owned();
    }
    let names: Vec<String> = grantees
        .users
        .iter()
        .cloned()
        .chain(grantees.groups.iter().map(|g| format!("group {g}")))
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_environment_lists_every_verb_with_grants_and_defaults_told_apart() {
        let file = EnvironmentsFile::parse(
            "environments:
  - {name: staging, namespace: shop-staging, policy: auto}
  - name: production
    namespace: shop-production
    policy: manual
    approvals: {users: [alice], groups: [sre]}
    grants:
      rollback: {users: [bob]}
      pin: {groups: [sre]}
groups:
  sre: [carol]
",
        )
        .unwrap();
        let rows = rows(&file);
        assert_eq!(rows.len(), 2 * GrantedVerb::ALL.len());
        let row = |env: &str, verb: GrantedVerb| {
            let (_, _, grantees) = rows.iter().find(|(e, v, _)| e == env && *v == verb).unwrap();
            (who(grantees), grantees.source)
        };
        assert_eq!(row("production", GrantedVerb::Rollback), ("bob".to_owned(), "granted"));
        assert_eq!(row("production", GrantedVerb::Pin), ("group sre".to_owned(), "granted"));
        let (who_promotes, source) = row("production", GrantedVerb::Promote);
        assert_eq!(who_promotes, "alice, group sre");
        assert!(source.starts_with("default"), "{source}");
        assert_eq!(row("staging", GrantedVerb::Promote).0, "everyone in people.yaml");
        assert_eq!(
            row("staging", GrantedVerb::MarkBad).0,
            "alice, group sre",
            "mark-bad: whoever approves anywhere"
        );
    }
}

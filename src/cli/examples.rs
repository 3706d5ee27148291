//! The "Examples:" section of every command's help (and so of its man
//! page), kept in one table so that a new command cannot ship without one:
//! a test walks the command tree.

use clap::Command;

/// (command path below `s3vault`, examples).
const EXAMPLES: &[(&str, &str)] = &[
    ("keygen", "s3vault keygen /etc/s3vault/clinic.key"),
    (
        "init",
        "s3vault init s3://clinic-phi/records --key-file /etc/s3vault/clinic.key
  s3vault init file:///srv/vault --passphrase-file /root/vault.pass --chunk-size 64K",
    ),
    (
        "mount",
        "s3vault mount s3://clinic-phi/records /mnt/records --key-file /etc/s3vault/clinic.key
  s3vault mount s3://clinic-phi/records /mnt/records --key-file /etc/s3vault/clinic.key --read-only
  mount -t fuse.s3vault s3://clinic-phi/records /mnt/records -o key_file=/etc/s3vault/clinic.key",
    ),
    (
        "umount",
        "s3vault umount /mnt/records\n  s3vault umount /mnt/records --timeout 600",
    ),
    (
        "status",
        "s3vault status /mnt/records\n  s3vault status /mnt/records --json",
    ),
    (
        "info",
        "s3vault info s3://clinic-phi/records
  s3vault info s3://clinic-phi/records --key-file /etc/s3vault/clinic.key",
    ),
    (
        "key list",
        "s3vault key list s3://clinic-phi/records --key-file /etc/s3vault/clinic.key",
    ),
    (
        "key add",
        "s3vault keygen /etc/s3vault/backup.key
  s3vault key add s3://clinic-phi/records --key-file /etc/s3vault/clinic.key --new-key-file /etc/s3vault/backup.key",
    ),
    (
        "key remove",
        "s3vault key remove s3://clinic-phi/records 1 --key-file /etc/s3vault/backup.key",
    ),
    (
        "audit log",
        "s3vault audit log s3://clinic-phi/records --key-file K --path '/patients/smith*' --since 30d
  s3vault audit log s3://clinic-phi/records --key-file K --user alice --since 2026-11-01 --until 2026-11-30
  s3vault audit log s3://clinic-phi/records --key-file K --denied --format csv > denied.csv",
    ),
    (
        "audit verify",
        "s3vault audit verify s3://clinic-phi/records --key-file /etc/s3vault/clinic.key",
    ),
    (
        "audit report",
        "s3vault audit report s3://clinic-phi/records --key-file K --since 2026-11-01 --until 2026-11-30
  s3vault audit report s3://clinic-phi/records --key-file K --path '/patients/*' --format json",
    ),
    (
        "audit review",
        "s3vault audit review s3://clinic-phi/records --key-file K --since 2026-11-01 --until 2026-11-30 --tz America/New_York --html review-november.html
  s3vault audit review s3://clinic-phi/records --key-file K --path '/patients/smith/*' --since 90d --html smith.html --json smith.json
  s3vault audit review s3://clinic-phi/records --key-file K --since 30d --thresholds /etc/s3vault/review.toml --json -",
    ),
    (
        "audit alerts",
        "s3vault audit alerts s3://clinic-phi/records --key-file K --since 15m
  s3vault audit alerts s3://clinic-phi/records --key-file K --since 1h --thresholds /etc/s3vault/review.toml >> /var/log/s3vault-alerts.jsonl",
    ),
    (
        "snapshot create",
        "s3vault snapshot create s3://clinic-phi/records before-upgrade --key-file /etc/s3vault/clinic.key",
    ),
    (
        "snapshot list",
        "s3vault snapshot list s3://clinic-phi/records --key-file /etc/s3vault/clinic.key",
    ),
    (
        "snapshot delete",
        "s3vault snapshot delete s3://clinic-phi/records before-upgrade --key-file /etc/s3vault/clinic.key",
    ),
    (
        "fsck",
        "s3vault fsck s3://clinic-phi/records --key-file /etc/s3vault/clinic.key
  s3vault fsck s3://clinic-phi/records --key-file /etc/s3vault/clinic.key --quick
  s3vault fsck s3://clinic-phi/records --key-file /etc/s3vault/clinic.key --repair",
    ),
    (
        "gc",
        "s3vault gc s3://clinic-phi/records --key-file /etc/s3vault/clinic.key --dry-run
  s3vault gc s3://clinic-phi/records --key-file /etc/s3vault/clinic.key --min-age 1h",
    ),
    (
        "restore",
        "s3vault restore s3://clinic-phi/records /patients/smith --snapshot before-upgrade --to /srv/restored --key-file K",
    ),
    (
        "recover",
        "s3vault recover s3://clinic-phi/records /var/cache/s3vault/<volume id> --to /srv/recovered --key-file K",
    ),
    (
        "completions",
        "s3vault completions bash > /etc/bash_completion.d/s3vault
  s3vault completions zsh > /usr/local/share/zsh/site-functions/_s3vault
  s3vault completions fish > ~/.config/fish/completions/s3vault.fish",
    ),
    (
        "manpages",
        "s3vault manpages /usr/local/share/man/man1 && man s3vault-mount",
    ),
];

/// `command` with each subcommand's examples as its after-help.
pub fn with_examples(command: Command) -> Command {
    EXAMPLES.iter().fold(command, |command, (path, text)| {
        let words: Vec<&str> = path.split(' ').collect();
        add(command, &words, text)
    })
}

fn add(command: Command, path: &[&str], text: &str) -> Command {
    match path {
        [] => command.after_help(format!("Examples:\n  {text}")),
        [first, rest @ ..] => command.mut_subcommand(*first, |sub| add(sub, rest, text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_examples_that_use_it() {
        fn walk(command: &Command, path: &str, missing: &mut Vec<String>) {
            let subs: Vec<&Command> = command.get_subcommands().filter(|s| s.get_name() != "help").collect();
            if subs.is_empty() {
                let help = command.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                if !help.starts_with("Examples:") || !help.contains(&format!("s3vault {path}")) {
                    missing.push(path.to_string());
                }
            }
            for sub in subs {
                let path = format!("{path} {}", sub.get_name()).trim().to_string();
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::super::command(), "", &mut missing);
        assert!(missing.is_empty(), "commands without examples: {missing:?}");
    }
}

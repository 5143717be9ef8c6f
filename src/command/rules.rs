//! Redis ACL command rules as text: `+@all -@dangerous +ping -flushall -config|set
//! +client|setname allcommands nocommands`. Parsing here is syntax only (it needs no
//! Redis, so a config check can run it); names are resolved against the upstream's
//! catalogue when the rules are compiled ([`crate::policy::Permissions::compile`]), with the error
//! Redis's `ACL SETUSER` gives for the same rule.
//!
//! Only command rules belong here: key patterns, channels, passwords and user states are
//! the proxy's other settings (or Redis's), and are refused with a message saying so.

use std::fmt;

/// One command rule, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `allcommands` or `+@all`: every command, and the first-args allowed so far forgotten.
    AllCommands,
    /// `nocommands` or `-@all`: no command.
    NoCommands,
    /// `+name` / `-name`: a command (with all its subcommands), `cmd|sub` a subcommand, or
    /// (with `+`, for a command that has no subcommands) `cmd|arg` one first argument.
    Command { allow: bool, name: String },
    /// `+@category` / `-@category`.
    Category { allow: bool, name: String },
}

impl fmt::Display for Rule {
    /// The rule as written (the `+`/`-` forms' names keep their case), which is also how
    /// Redis names it in its errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = |allow: bool| if allow { '+' } else { '-' };
        match self {
            Rule::AllCommands => f.write_str("+@all"),
            Rule::NoCommands => f.write_str("-@all"),
            Rule::Command { allow, name } => write!(f, "{}{name}", sign(*allow)),
            Rule::Category { allow, name } => write!(f, "{}@{name}", sign(*allow)),
        }
    }
}

/// A rule Redis would refuse, or one that is not a command rule. The texts are those of
/// Redis's `ACL SETUSER` reply (without `-ERR `), naming the rule as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("Error in ACL SETUSER modifier '{0}': Syntax error")]
    Syntax(String),
    #[error("Error in ACL SETUSER modifier '{0}': Unknown command or category name in ACL")]
    Unknown(String),
    #[error(
        "Error in ACL SETUSER modifier '{0}': Allowing first-arg of a subcommand is not supported"
    )]
    FirstArgOfSubcommand(String),
    /// Valid in `ACL SETUSER`, but not a command rule (`~*`, `&*`, `on`, `>pass`, …).
    #[error(
        "'{0}' is not a command rule: only +/-command, +/-command|subcommand, \
         +/-@category, allcommands and nocommands belong in `commands`"
    )]
    NotACommandRule(String),
}

/// A list of command rules, applied left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Default for Rules {
    /// `+@all`: what a user without `commands` may run (as the proxy has always done).
    fn default() -> Self {
        Rules(vec![Rule::AllCommands])
    }
}

impl Rules {
    /// Parses rules separated by whitespace, as Redis's `ACLSetSelector` tells them apart
    /// (keywords case-insensitive; `+@`/`-@` before anything else is a category).
    pub fn parse(text: &str) -> Result<Rules, RuleError> {
        text.split_ascii_whitespace()
            .map(parse_one)
            .collect::<Result<_, _>>()
            .map(Rules)
    }

    pub fn as_slice(&self) -> &[Rule] {
        &self.0
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

/// The other words `ACL SETUSER` knows (matched case-insensitively, as Redis does).
const OTHER_KEYWORDS: &[&str] = &[
    "on",
    "off",
    "nopass",
    "resetpass",
    "reset",
    "allkeys",
    "resetkeys",
    "allchannels",
    "resetchannels",
    "clearselectors",
    "sanitize-payload",
    "skip-sanitize-payload",
];

fn parse_one(op: &str) -> Result<Rule, RuleError> {
    if op.eq_ignore_ascii_case("allcommands") || op.eq_ignore_ascii_case("+@all") {
        return Ok(Rule::AllCommands);
    }
    if op.eq_ignore_ascii_case("nocommands") || op.eq_ignore_ascii_case("-@all") {
        return Ok(Rule::NoCommands);
    }
    let allow = match op.as_bytes().first() {
        Some(b'+') => true,
        Some(b'-') => false,
        Some(b'~' | b'%' | b'&' | b'>' | b'<' | b'#' | b'!' | b'(') => {
            return Err(RuleError::NotACommandRule(op.to_owned()));
        }
        _ if OTHER_KEYWORDS.iter().any(|k| op.eq_ignore_ascii_case(k)) => {
            return Err(RuleError::NotACommandRule(op.to_owned()));
        }
        _ => return Err(RuleError::Syntax(op.to_owned())),
    };
    Ok(match op[1..].strip_prefix('@') {
        Some(category) => Rule::Category {
            allow,
            name: category.to_owned(),
        },
        None => Rule::Command {
            allow,
            name: op[1..].to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_redis_tells_rules_apart() {
        let cases: &[(&str, &[Rule])] = &[
            ("", &[]),
            ("allcommands", &[Rule::AllCommands]),
            ("+@ALL AllCommands", &[Rule::AllCommands, Rule::AllCommands]),
            ("-@all nocommands", &[Rule::NoCommands, Rule::NoCommands]),
            (
                " +get\t-Config|SET ",
                &[
                    Rule::Command {
                        allow: true,
                        name: "get".into(),
                    },
                    Rule::Command {
                        allow: false,
                        name: "Config|SET".into(),
                    },
                ],
            ),
            (
                "-@dangerous +@",
                &[
                    Rule::Category {
                        allow: false,
                        name: "dangerous".into(),
                    },
                    Rule::Category {
                        allow: true,
                        name: "".into(),
                    },
                ],
            ),
            (
                "+",
                &[Rule::Command {
                    allow: true,
                    name: "".into(),
                }],
            ),
        ];
        for (text, rules) in cases {
            assert_eq!(Rules::parse(text).unwrap().as_slice(), *rules, "{text:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_command_rule() {
        let cases = [
            ("get", RuleError::Syntax("get".into())),
            ("@read", RuleError::Syntax("@read".into())),
            ("~*", RuleError::NotACommandRule("~*".into())),
            ("%R~k", RuleError::NotACommandRule("%R~k".into())),
            ("&chan", RuleError::NotACommandRule("&chan".into())),
            (">secret", RuleError::NotACommandRule(">secret".into())),
            ("ON", RuleError::NotACommandRule("ON".into())),
            ("(+get)", RuleError::NotACommandRule("(+get)".into())),
        ];
        for (text, error) in cases {
            assert_eq!(
                Rules::parse(&format!("+@all {text}")),
                Err(error),
                "{text:?}"
            );
        }
    }

    #[test]
    fn displays_as_written() {
        let text = "+@all -@dangerous +ping -flushall -config|set +client|setname -@all";
        assert_eq!(Rules::parse(text).unwrap().to_string(), text);
        assert_eq!(Rules::default().to_string(), "+@all");
        assert_eq!(
            RuleError::Unknown("+nosuch".into()).to_string(),
            "Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL"
        );
    }
}

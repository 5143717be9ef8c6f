//! Rules compiled against a small catalogue and checked, table-driven. The same semantics
//! are checked against a real Redis, verdict for verdict, in tests/policy_rules.rs.

use std::sync::Arc;

use bytes::Bytes;

use super::*;

fn args(request: &str) -> Vec<Bytes> {
    request
        .split(' ')
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

fn permissions(rules: &str, read_only: bool) -> Permissions {
    let catalogue = Arc::new(catalogue::sample());
    Permissions::compile(&Rules::parse(rules).unwrap(), catalogue, read_only).unwrap()
}

#[test]
fn evaluates_left_to_right_as_redis_does() {
    use Verdict::{Allowed as A, Unchecked as U};
    let r = Verdict::Refused;
    let cases: &[(&str, &[(&str, Verdict<'_>)])] = &[
        (
            "",
            &[
                ("get k", r("get")),
                ("auth p", A),
                ("config get x", r("config|get")),
            ],
        ),
        (
            "+@all",
            &[("get k", A), ("flushall", A), ("config set a b", A)],
        ),
        ("+@all -@all", &[("get k", r("get")), ("auth u p", A)]),
        ("nocommands +get", &[("GET k", A), ("set k v", r("set"))]),
        ("+@all -get +get", &[("get k", A)]),
        ("+get -@all", &[("get k", r("get"))]),
        (
            "+@all -@dangerous",
            &[
                ("flushall", r("flushall")),
                ("config get x", r("config|get")),
                ("config help", A),
                ("set k v", A),
            ],
        ),
        (
            "+@all -config +config|get",
            &[
                ("config get x", A),
                ("config set a b", r("config|set")),
                ("config help", r("config|help")),
            ],
        ),
        (
            "+@all -config|set",
            &[("config set a b", r("config|set")), ("config get a", A)],
        ),
        (
            "-@all +config",
            &[("config set a b", A), ("config help", A)],
        ),
        (
            "-@all +config|set -config",
            &[("config set a b", r("config|set"))],
        ),
        // A container in a category takes its subcommands with it; then each subcommand in
        // the category is set on its own.
        (
            "-@all +@slow",
            &[
                ("config help", A),
                ("config set a b", A),
                ("get k", r("get")),
            ],
        ),
        (
            "+@all -@slow",
            &[("config help", r("config|help")), ("get k", A)],
        ),
        // The first-arg form, for a command without subcommands.
        (
            "-@all +select|0 +select|1",
            &[("select 0", A), ("SELECT 1", A), ("select 2", r("select"))],
        ),
        ("-@all +select|0 -select", &[("select 0", r("select"))]),
        ("-@all +select|0 +@all -@all", &[("select 0", r("select"))]),
        ("-@all +select|0 -@connection", &[("select 0", r("select"))]),
        // What Redis rejects before its ACL.
        (
            "-@all",
            &[
                ("nosuch", U),
                ("config nosuch", U),
                ("get", U),
                ("config", U),
                ("", U),
            ],
        ),
    ];
    for (rules, checks) in cases {
        let p = permissions(rules, false);
        for (request, verdict) in *checks {
            assert_eq!(p.check(&args(request)), *verdict, "{rules:?}: {request:?}");
        }
    }
}

#[test]
fn read_only_refuses_writes_and_scripts_that_may_write() {
    use Verdict::Allowed as A;
    let r = Verdict::Refused;
    let p = permissions("+@all", true);
    for (request, verdict) in [
        ("get k", A),
        ("set k v", r("set")),
        ("flushall", r("flushall")),
        ("eval s 0", r("eval")),
        ("eval_ro s 0", A),
        ("config get x", A),
    ] {
        assert_eq!(p.check(&args(request)), verdict, "{request:?}");
    }
    assert_eq!(permissions("-@all", true).check(&args("set k v")), r("set"));
}

#[test]
fn names_are_resolved_with_redis_errors() {
    let catalogue = Arc::new(catalogue::sample());
    let cases = [
        ("+nosuch", RuleError::Unknown("+nosuch".into())),
        ("-nosuch", RuleError::Unknown("-nosuch".into())),
        ("+@nosuch", RuleError::Unknown("+@nosuch".into())),
        ("-@", RuleError::Unknown("-@".into())),
        ("+", RuleError::Unknown("+".into())),
        (
            "+config|nosuch",
            RuleError::Unknown("+config|nosuch".into()),
        ),
        ("+nosuch|x", RuleError::Unknown("+nosuch|x".into())),
        ("-get|x", RuleError::Unknown("-get|x".into())),
        ("-config|set|x", RuleError::Unknown("-config|set|x".into())),
        (
            "+config|set|x",
            RuleError::FirstArgOfSubcommand("+config|set|x".into()),
        ),
        ("+config|", RuleError::Syntax("+config|".into())),
        ("+nosuch|", RuleError::Unknown("+nosuch|".into())),
    ];
    for (rule, error) in cases {
        let rules = Rules::parse(&format!("+get {rule} +set")).unwrap();
        let result = Permissions::compile(&rules, Arc::clone(&catalogue), false);
        assert_eq!(result.unwrap_err(), error, "{rule:?}");
    }
    // Categories from ACL CAT alone, and names in any case, are accepted.
    for rule in ["+@hyperloglog", "-@READ", "+CONFIG|Set", "+GET"] {
        let rules = Rules::parse(rule).unwrap();
        assert!(
            Permissions::compile(&rules, Arc::clone(&catalogue), false).is_ok(),
            "{rule}"
        );
    }
}

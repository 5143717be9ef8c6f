//! The policy module's command rules (issue 18) against Redis's own ACL, verdict for
//! verdict: for each rule set, the same user is created in a real Redis with
//! `ACL SETUSER u reset on nopass ~* &* <rules>`, and for every command and subcommand
//! the catalogue knows (with as many arguments as its arity asks, and with one too few),
//! `ACL DRYRUN u …` must say what `Permissions::check` says. The catalogue is that same
//! Redis's `COMMAND` and `ACL CAT` replies. Rules Redis refuses must be refused with
//! Redis's text.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::*;
use redis_ambassador::policy::{self, Catalogue, Permissions, Rules, Verdict};

/// Rule sets covering each kind of rule, their order, containers and their subcommands
/// in and out of categories, and the first-arg form.
const RULE_SETS: &[&str] = &[
    "+@all",
    "-@all",
    "nocommands",
    "+@all -@dangerous",
    "+@all -@dangerous +ping -flushall -config|set +client|setname allcommands nocommands",
    "+@all -@dangerous +ping -flushall -config|set +client|setname",
    "-@all +@read +@connection -client +client|setname",
    "+@all -@slow",
    "-@all +@slow",
    "-@all +@fast -@read",
    "-@all +@write -@string +get",
    "-@all +config +@all -config|set -@admin +config|get",
    "-@all +select|0 +select|1 +debug|object +DEBUG|Sleep",
    "+@all -select +select|0 -@connection +select|5",
    "+@all -@scripting +eval_ro +script|exists",
    "-@all +@pubsub +@transaction -@blocking",
    "+@all -@keyspace +del -@hash",
    "-@all +acl|whoami +command -command|docs",
    "nocommands +@all -@fast +get -@connection",
    "-@all +@dangerous -@admin",
    "+@all -client +client|id +client|setname -client|setname",
    "-@all +@admin -@dangerous",
    "-@all +@geo +@bitmap +@hyperloglog +@stream -@write",
    "-@all +@list +@set +@sortedset -@slow",
    "+@ALL -@Dangerous +FlushAll -CONFIG|GET",
];

/// Rules Redis refuses, and how.
const BAD_RULES: &[&str] = &[
    "+nosuch",
    "-nosuch",
    "+@nosuch",
    "-@nosuch",
    "+@",
    "-@",
    "+config|nosuch",
    "+config|set|x",
    "+config|",
    "-get|x",
    "-config|set|x",
    "+nosuch|x",
    "-@all +get +@nosuch",
];

fn catalogue(redis: &mut RawConn) -> Catalogue {
    let command = Bytes::from(redis.call(&["COMMAND"]));
    let acl_cat = Bytes::from(redis.call(&["ACL", "CAT"]));
    Catalogue::from_replies(&command, Some(&acl_cat)).expect("COMMAND and ACL CAT replies")
}

/// Requests for every command and subcommand: with the arguments its arity asks for, and
/// with one too few (which Redis rejects before its ACL), plus the first-arg forms.
fn requests(catalogue: &Catalogue) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for entry in catalogue.entries() {
        if entry.is_container() {
            // Alone, a container is a wrong arity.
            out.push(vec![entry.full_name.to_uppercase()]);
            continue;
        }
        let mut request: Vec<String> = entry.full_name.split('|').map(str::to_owned).collect();
        let wanted = usize::try_from(entry.arity.unsigned_abs()).unwrap();
        while request.len() < wanted {
            request.push("x".into());
        }
        if request.len() > 1 && entry.parent.is_none() {
            let mut short = request.clone();
            short.pop();
            out.push(short);
        }
        out.push(request);
    }
    for extra in [
        "select 0",
        "select 1",
        "SELECT 5",
        "select 2",
        "debug object k",
        "debug SLEEP 0",
        "debug help",
        "nosuchcommand x",
        "config nosuchsub",
    ] {
        out.push(extra.split(' ').map(str::to_owned).collect());
    }
    out
}

/// What `ACL DRYRUN` answering `reply` means, as a verdict on the request.
fn redis_verdict(reply: &[u8]) -> Result<Verdict<'_>, String> {
    const REFUSED: &[u8] = b"This user has no permissions to run the '";
    if reply == b"+OK\r\n" {
        return Ok(Verdict::Allowed);
    }
    if reply.starts_with(b"-ERR wrong number of arguments") || reply.starts_with(b"-ERR Command '")
    {
        return Ok(Verdict::Unchecked);
    }
    // A bulk string: `$<len>\r\nThis user has no permissions to run the '<name>' command\r\n`.
    let text = reply
        .iter()
        .position(|&b| b == b'\n')
        .map(|n| &reply[n + 1..])
        .and_then(|t| t.strip_prefix(REFUSED))
        .and_then(|t| t.strip_suffix(b"' command\r\n"))
        .and_then(|name| std::str::from_utf8(name).ok());
    text.map(Verdict::Refused).ok_or_else(|| escape(reply))
}

#[test]
fn verdicts_equal_acl_dryrun() {
    let server = RedisServer::start();
    let mut redis = server.conn();
    let catalogue = Arc::new(catalogue(&mut redis));
    assert!(
        catalogue.entries().len() > 200,
        "{} commands",
        catalogue.entries().len()
    );
    let requests = requests(&catalogue);
    let mut checked = 0;
    let mut refused = 0;
    for rules in RULE_SETS {
        let mut setuser = vec!["ACL", "SETUSER", "u", "reset", "on", "nopass", "~*", "&*"];
        setuser.extend(rules.split_whitespace());
        redis.call_expect(&setuser, b"+OK\r\n");
        let permissions =
            Permissions::compile(&Rules::parse(rules).unwrap(), Arc::clone(&catalogue), false)
                .unwrap_or_else(|e| panic!("{rules}: {e}"));
        for request in &requests {
            let mut dryrun = vec!["ACL", "DRYRUN", "u"];
            dryrun.extend(request.iter().map(String::as_str));
            let reply = redis.call(&dryrun);
            let expected = redis_verdict(&reply)
                .unwrap_or_else(|r| panic!("{rules}: {request:?}: ACL DRYRUN said {r}"));
            let args: Vec<Bytes> = request.iter().map(|a| Bytes::from(a.clone())).collect();
            let verdict = permissions.check(&args);
            assert_eq!(verdict, expected, "rules {rules:?}, request {request:?}");
            checked += 1;
            refused += usize::from(matches!(verdict, Verdict::Refused(_)));
        }
    }
    eprintln!(
        "{checked} verdicts ({refused} refusals) over {} rule sets and {} requests equal ACL DRYRUN's",
        RULE_SETS.len(),
        requests.len()
    );
    assert!(
        refused > 1000 && checked - refused > 1000,
        "{checked} / {refused}"
    );
}

#[test]
fn rules_redis_refuses_are_refused_with_its_text() {
    let server = RedisServer::start();
    let mut redis = server.conn();
    let catalogue = Arc::new(catalogue(&mut redis));
    for rules in BAD_RULES {
        let mut setuser = vec!["ACL", "SETUSER", "v"];
        setuser.extend(rules.split_whitespace());
        let reply = redis.call(&setuser);
        let error = Rules::parse(rules)
            .and_then(|r| Permissions::compile(&r, Arc::clone(&catalogue), false))
            .expect_err(rules);
        assert_bytes_eq(rules, format!("-ERR {error}\r\n").as_bytes(), &reply);
    }
}

/// The refusal Redis itself sends when the user runs the command, next to
/// `replies::noperm_command`: equal on Redis 7.2+, and on 7.0 but for `this user`
/// (7.0's wording) where 7.2 says `User <name>`.
#[test]
fn noperm_text_is_redis_own() {
    let server = RedisServer::start();
    let mut redis = server.conn();
    let catalogue = Arc::new(catalogue(&mut redis));
    let rules = "+@all -@dangerous -get -config|set +auth";
    let mut setuser = vec!["ACL", "SETUSER", "u", "reset", "on", "nopass", "~*", "&*"];
    setuser.extend(rules.split_whitespace());
    redis.call_expect(&setuser, b"+OK\r\n");
    let permissions =
        Permissions::compile(&Rules::parse(rules).unwrap(), catalogue, false).unwrap();
    let mut user = server.conn();
    user.call_expect(&["AUTH", "u", "any"], b"+OK\r\n");
    let version = server.version();
    let wording_7_2 = !(version.starts_with("6.") || version.starts_with("7.0."));
    // Harmless had the ACL let them through: nothing is stored.
    for request in [
        &["GET", "k"][..],
        &["CONFIG", "SET", "maxmemory-samples", "5"],
        &["FLUSHALL"],
        &["config", "GET", "maxmemory"],
    ] {
        let args: Vec<Bytes> = request
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let Verdict::Refused(name) = permissions.check(&args) else {
            panic!("{request:?} allowed");
        };
        let mut ours = BytesMut::new();
        redis_ambassador::replies::noperm_command(&mut ours, "u", name);
        let theirs = user.call(request);
        let expected = if wording_7_2 {
            ours.to_vec()
        } else {
            String::from_utf8_lossy(&ours)
                .replace("-NOPERM User u ", "-NOPERM this user ")
                .into_bytes()
        };
        assert_bytes_eq(&request.join(" "), &expected, &theirs);
    }
}

/// The loader, over the project's own upstream connections, reads the same catalogue as
/// the replies read directly.
#[tokio::test]
async fn loader_reads_the_upstream_catalogue() {
    let server = RedisServer::start();
    let direct = catalogue(&mut server.conn());
    let config: redis_ambassador::config::Config =
        format!("[upstream]\naddress = \"{}\"\n", server.addr())
            .parse()
            .unwrap();
    let secrets = redis_ambassador::credentials::Secrets::load(&config).unwrap();
    let upstream = redis_ambassador::upstream::Upstream::new(&config, &secrets);
    let loaded = policy::catalogue::load(&upstream).await.unwrap();
    let (loaded, direct) = (summary(&loaded), summary(&direct));
    assert!(loaded.len() > 200);
    assert!(loaded == direct, "loaded {loaded:#?}\n\ndirect {direct:#?}");
}

/// A catalogue as text, independent of the order Redis lists its commands in (which
/// follows its hash table, and may differ between two calls): name -> arity, flags,
/// categories, container.
fn summary(catalogue: &Catalogue) -> BTreeMap<String, String> {
    catalogue
        .entries()
        .iter()
        .map(|e| {
            let categories: Vec<&str> = catalogue
                .categories()
                .iter()
                .filter(|c| {
                    catalogue
                        .category_bit(c)
                        .is_some_and(|bit| e.categories & bit != 0)
                })
                .map(String::as_str)
                .collect();
            let parent = e.parent.map(|p| catalogue.entries()[p].full_name.as_str());
            let flags = (e.write, e.readonly, e.no_auth, e.module);
            let text = format!("{} {flags:?} {categories:?} {parent:?}", e.arity);
            (e.full_name.clone(), text)
        })
        .collect()
}

/// `read_only` on a real Redis's catalogue: every command Redis flags `write` is refused,
/// and so are the scripts that may write; their read-only forms and the rest are not.
#[test]
fn read_only_on_the_real_catalogue() {
    let server = RedisServer::start();
    let catalogue = Arc::new(catalogue(&mut server.conn()));
    let permissions =
        Permissions::compile(&Rules::default(), Arc::clone(&catalogue), true).unwrap();
    let check = |request: &str| {
        let args: Vec<Bytes> = request
            .split(' ')
            .map(|a| Bytes::from(a.to_owned()))
            .collect();
        permissions.check(&args)
    };
    for refused in [
        "set k v",
        "flushall",
        "eval s 0",
        "evalsha s 0",
        "fcall f 0",
        "function load x",
        "xgroup create s g $",
        "del k",
    ] {
        assert!(matches!(check(refused), Verdict::Refused(_)), "{refused}");
    }
    for allowed in [
        "get k",
        "eval_ro s 0",
        "evalsha_ro s 0",
        "fcall_ro f 0",
        "script load s",
        "script exists s",
        "publish c m",
        "config set a b",
        "multi",
    ] {
        assert_eq!(check(allowed), Verdict::Allowed, "{allowed}");
    }
    let writes = catalogue.entries().iter().filter(|e| e.write).count();
    assert!(writes > 80, "{writes} write commands");
}

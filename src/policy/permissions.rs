//! A user's rules compiled against the upstream's catalogue, and the check of a request.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::catalogue::{Catalogue, CommandIndex, Entry};
use crate::command::rules::{Rule, RuleError, Rules};

/// What the policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The rules allow it.
    Allowed,
    /// The rules refuse it; the name is the one Redis prints (`get`, `config|set`), for
    /// [`crate::replies::noperm_command`].
    Refused(&'a str),
    /// Redis would refuse it before looking at its ACL (a command or subcommand it does
    /// not know, a wrong number of arguments): forwarded, it gets Redis's own error.
    Unchecked,
}

/// A user's command rules resolved against one upstream's catalogue: Redis's selector, in
/// the same form Redis keeps it, so the same rules give the same answers.
#[derive(Debug, Clone)]
pub struct Permissions {
    catalogue: Arc<Catalogue>,
    /// One bit per [`CommandIndex`] (Redis's `allowed_commands`).
    allowed: Vec<bool>,
    /// Redis's `SELECTOR_FLAG_ALLCOMMANDS`: set by `+@all`, cleared as soon as any
    /// command is taken away.
    all_commands: bool,
    /// `+select|0`: first arguments allowed for a command that is not (Redis's
    /// `allowed_firstargs`), lower case.
    first_args: HashMap<CommandIndex, Vec<String>>,
    /// `read_only = true`: also refuse what [`Catalogue::may_write`] says may write.
    read_only: bool,
}

impl Permissions {
    /// Applies `rules` left to right to a user who may run nothing, as `ACL SETUSER u
    /// reset <rules>` does; the first rule Redis would refuse is the error.
    pub fn compile(
        rules: &Rules,
        catalogue: Arc<Catalogue>,
        read_only: bool,
    ) -> Result<Permissions, RuleError> {
        let mut permissions = Permissions {
            allowed: vec![false; catalogue.entries().len()],
            catalogue,
            all_commands: false,
            first_args: HashMap::new(),
            read_only,
        };
        for rule in rules.as_slice() {
            permissions.apply(rule)?;
        }
        Ok(permissions)
    }

    /// Redis's `ACLSetSelector`, for the command rules.
    fn apply(&mut self, rule: &Rule) -> Result<(), RuleError> {
        let catalogue = Arc::clone(&self.catalogue);
        let unknown = || RuleError::Unknown(rule.to_string());
        match rule {
            Rule::AllCommands | Rule::NoCommands => {
                let allow = *rule == Rule::AllCommands;
                self.allowed.fill(allow);
                self.all_commands = allow;
                self.first_args.clear();
            }
            Rule::Command { allow: true, name } if name.contains('|') => {
                // Redis splits at the last `|`: `a|b|c` is `a|b` and `c`.
                let (command, sub) = name.rsplit_once('|').ok_or_else(unknown)?;
                let index = catalogue.by_name(command).ok_or_else(unknown)?;
                let entry = &catalogue.entries()[index];
                if entry.parent.is_some() {
                    return Err(RuleError::FirstArgOfSubcommand(rule.to_string()));
                }
                if sub.is_empty() {
                    return Err(RuleError::Syntax(rule.to_string()));
                }
                if entry.is_container() {
                    let sub = catalogue.by_name(name).ok_or_else(unknown)?;
                    self.change(sub, true);
                } else {
                    // Redis's deprecated first-arg form (`+select|0`).
                    let args = self.first_args.entry(index).or_default();
                    if !args.iter().any(|a| a.eq_ignore_ascii_case(sub)) {
                        args.push(sub.to_ascii_lowercase());
                    }
                }
            }
            Rule::Command { allow, name } => {
                let index = catalogue.by_name(name).ok_or_else(unknown)?;
                self.change(index, *allow);
            }
            Rule::Category { allow, name } => {
                let bit = catalogue.category_bit(name).ok_or_else(unknown)?;
                // Redis walks its command table: a command in the category changes with
                // all its subcommands, then each subcommand in the category changes on
                // its own. Module commands are left alone.
                for index in catalogue.commands() {
                    let entry = &catalogue.entries()[index];
                    if entry.module {
                        continue;
                    }
                    if entry.categories & bit != 0 {
                        self.change(index, *allow);
                    }
                    for sub in entry.subcommands() {
                        let sub_entry = &catalogue.entries()[sub];
                        if !sub_entry.module && sub_entry.categories & bit != 0 {
                            self.change(sub, *allow);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Redis's `ACLChangeSelectorPerm`: the command, its subcommands, and no first-args.
    fn change(&mut self, index: CommandIndex, allow: bool) {
        self.set(index, allow);
        self.first_args.remove(&index);
        let catalogue = Arc::clone(&self.catalogue);
        for sub in catalogue.entries()[index].subcommands() {
            self.set(sub, allow);
        }
    }

    fn set(&mut self, index: CommandIndex, allow: bool) {
        if let Some(bit) = self.allowed.get_mut(index) {
            *bit = allow;
        }
        if !allow {
            self.all_commands = false;
        }
    }

    /// The verdict on a request (`args[0]` the command's name), as Redis's
    /// `processCommand` reaches it: lookup, arity, then the ACL check
    /// (`ACLSelectorCheckCmd`) — and, for a `read_only` user, whether it may write.
    /// Allocation-free: this runs for every request.
    pub fn check(&self, args: &[Bytes]) -> Verdict<'_> {
        let Some(index) = self.catalogue.lookup(args) else {
            return Verdict::Unchecked;
        };
        let entry = &self.catalogue.entries()[index];
        if !crate::command::arity_ok(entry.arity, args.len()) {
            return Verdict::Unchecked;
        }
        if !self.allows(index, entry, args) || self.read_only && self.catalogue.may_write(index) {
            return Verdict::Refused(&entry.full_name);
        }
        Verdict::Allowed
    }

    fn allows(&self, index: CommandIndex, entry: &Entry, args: &[Bytes]) -> bool {
        if self.all_commands || entry.no_auth || self.allowed.get(index) == Some(&true) {
            return true;
        }
        let position = if entry.parent.is_some() { 2 } else { 1 };
        match (self.first_args.get(&index), args.get(position)) {
            (Some(allowed), Some(arg)) => allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(arg)),
            _ => false,
        }
    }

    /// The catalogue the rules were resolved against.
    pub fn catalogue(&self) -> &Arc<Catalogue> {
        &self.catalogue
    }
}

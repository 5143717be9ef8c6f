//! The commands a session answers itself, with Redis's exact replies: AUTH (as the
//! ambassador's users, or handed to Redis for its own users), HELLO, SELECT, QUIT, RESET,
//! EXEC/DISCARD/UNWATCH outside a transaction, and the CLIENT subcommands that concern the connection (SETNAME,
//! GETNAME, ID, INFO, SETINFO; TRACKING and REPLY, which switch to relay mode). The
//! order of checks is Redis's: unknown subcommand, arity, then authentication.

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::state::{Flow, Session, request_bytes};
use crate::command::{self, ClientSub, Local};
use crate::metrics::{self, ErrorClass};
use crate::protocol::number::{parse_i32, parse_i64};
use crate::protocol::{Proto, Request, encode};
use crate::replies::{self, refusal};
use crate::secret::Secret;
use crate::upstream::{AuthFailure, ServerInfo, UpstreamError};
use std::sync::Arc;

impl Session {
    pub(super) async fn local(
        &mut self,
        local: Local,
        request: &Request,
        batch: &mut Batch,
    ) -> Flow {
        let args = &request.args;
        match local {
            Local::Auth => Box::pin(self.auth(args, batch)).await,
            Local::Hello => Box::pin(self.hello(args, batch)).await,
            Local::Quit => {
                if self.needs_pin() {
                    self.drop_pin = true;
                }
                batch.reply(replies::OK);
                return Flow::Close;
            }
            Local::Reset => {
                if self.needs_pin() {
                    // WATCH is on the pinned connection: drop it, and plan nothing more
                    // on it.
                    self.drop_pin = true;
                    batch.barrier = true;
                }
                self.reset();
                batch.reply(replies::RESET);
            }
            Local::Client => return self.client(request, batch),
            _ if self.requires_auth() => batch.reply(replies::NOAUTH),
            Local::Select => Box::pin(self.select(&args[1], batch)).await,
            // Redis answers them: a PING that says PONG while Redis is down (or busy) would
            // hide the outage from health checks, and MONITOR would not show them.
            Local::Ping | Local::Echo => return self.forward(request.clone(), batch),
            Local::Exec => batch.reply(replies::EXEC_WITHOUT_MULTI),
            Local::Discard => batch.reply(replies::DISCARD_WITHOUT_MULTI),
            Local::Unwatch if self.watching => {
                batch.pin_required = true;
                self.watching = false;
                batch.forward(request_bytes(request.clone()), self.conn_state());
            }
            Local::Unwatch => batch.reply(replies::OK),
        }
        Flow::Continue
    }

    async fn auth(&mut self, args: &[Bytes], batch: &mut Batch) {
        if args.len() > 3 {
            return batch.reply(replies::SYNTAX_ERROR);
        }
        let (username, password) = if args.len() == 2 {
            if !self.shared.client_auth.required() {
                return batch.reply(replies::AUTH_WITHOUT_PASSWORD);
            }
            (&b"default"[..], &args[1][..])
        } else {
            (&args[1][..], &args[2][..])
        };
        if let Err(reply) = self.log_in(username, password).await {
            // A failed AUTH does not undo an earlier success (Redis 6+).
            tracing::debug!(peer = %self.peer, "client authentication failed");
            metrics::global().client_auth_failures.increment(1);
            batch.local().extend_from_slice(&reply);
            return batch.end_local();
        }
        batch.reply(replies::OK);
    }

    /// Authenticates the client: as one of the ambassador's users, or — when the
    /// ambassador has none of its own (no `[client]` section) and the name is not
    /// `default` — as a Redis user, checked by the server itself, whose commands then go
    /// to the server as that user (its ACLs apply). `Err`: the reply to give.
    async fn log_in(&mut self, username: &[u8], password: &[u8]) -> Result<(), Bytes> {
        if let Some(user) = self.shared.authenticate(username, password) {
            self.authenticated = true;
            self.user = user;
            self.identity = None;
            return Ok(());
        }
        let as_redis_user = !self.shared.client_auth.required()
            && self.shared.cluster.is_none()
            && !username.eq_ignore_ascii_case(crate::auth::DEFAULT_USER.as_bytes());
        let name = match std::str::from_utf8(username) {
            Ok(name) if as_redis_user => name,
            _ => return Err(Bytes::from_static(replies::WRONGPASS)),
        };
        let upstream = Arc::new(self.shared.upstream.as_user(
            name,
            Secret::new(password.to_vec()),
            self.db,
        ));
        // A connection made with the credentials is the server's own check.
        let checked = upstream.get().await.map(drop);
        match checked {
            Ok(()) => {
                self.authenticated = true;
                self.user = Arc::from(name);
                self.identity = Some(upstream);
                Ok(())
            }
            Err(UpstreamError::AuthFailed(AuthFailure::Refused(text))) => {
                let mut reply = BytesMut::new();
                encode::error(&mut reply, text.as_bytes());
                Err(reply.freeze())
            }
            Err(error) => {
                let mut reply = BytesMut::new();
                error.reply_to(&mut reply);
                Err(reply.freeze())
            }
        }
    }

    async fn hello(&mut self, args: &[Bytes], batch: &mut Batch) {
        let mut version = None;
        let mut next = 1;
        if let Some(arg) = args.get(1) {
            match parse_i64(arg) {
                None => return batch.reply(replies::HELLO_BAD_VERSION),
                Some(2) => version = Some(Proto::Resp2),
                Some(3) => version = Some(Proto::Resp3),
                Some(_) => return batch.reply(replies::NOPROTO),
            }
            next = 2;
        }
        let mut credentials = None;
        let mut new_name = None;
        let mut j = next;
        while j < args.len() {
            let more = args.len() - 1 - j;
            let option = &args[j];
            if option.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                credentials = Some((&args[j + 1], &args[j + 2]));
                j += 3;
            } else if option.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                if !valid_client_attribute(&args[j + 1]) {
                    return batch.reply(replies::BAD_CLIENT_NAME);
                }
                new_name = Some(args[j + 1].clone());
                j += 2;
            } else {
                replies::hello_syntax(batch.local(), option);
                return batch.end_local();
            }
        }
        if let Some((username, password)) = credentials {
            if let Err(reply) = self.log_in(username, password).await {
                tracing::debug!(peer = %self.peer, "client authentication failed (HELLO)");
                metrics::global().client_auth_failures.increment(1);
                batch.local().extend_from_slice(&reply);
                return batch.end_local();
            }
        }
        if self.requires_auth() {
            return batch.reply(replies::HELLO_NOAUTH);
        }
        let info = match self.shared.upstream.info().await {
            Ok(info) => info,
            Err(error) => {
                replies::proxy_error(batch.local(), &error);
                return batch.end_local();
            }
        };
        if version == Some(Proto::Resp3) && !info.resp3 {
            return batch.reply(replies::NOPROTO);
        }
        if let Some(name) = new_name {
            self.name = (!name.is_empty()).then_some(name);
        }
        if let Some(version) = version {
            self.proto = version;
        }
        self.hello_reply(&info, batch.local());
        batch.end_local();
    }

    /// HELLO's reply: the server's map, with this client's id and protocol, and the mode of
    /// one standalone server (in cluster mode too: the application sees one server).
    fn hello_reply(&self, info: &ServerInfo, out: &mut BytesMut) {
        encode::map_header(out, 7, self.proto);
        encode::bulk(out, b"server");
        encode::bulk(
            out,
            if info.server.is_empty() {
                b"redis"
            } else {
                &info.server
            },
        );
        encode::bulk(out, b"version");
        encode::bulk(out, &info.version);
        encode::bulk(out, b"proto");
        encode::integer(out, self.proto.number());
        encode::bulk(out, b"id");
        encode::integer(out, self.id as i64);
        encode::bulk(out, b"mode");
        // In cluster mode the application sees one server, as it would a standalone Redis.
        encode::bulk(
            out,
            if info.mode.is_empty() || self.shared.cluster.is_some() {
                b"standalone"
            } else {
                &info.mode
            },
        );
        encode::bulk(out, b"role");
        encode::bulk(
            out,
            if info.role.is_empty() {
                b"master"
            } else {
                &info.role
            },
        );
        encode::bulk(out, b"modules");
        encode::array_header(out, 0);
    }

    async fn select(&mut self, arg: &[u8], batch: &mut Batch) {
        let Some(index) = parse_i32(arg) else {
            return batch.reply(replies::NOT_AN_INTEGER);
        };
        let info = match self.shared.upstream.info().await {
            Ok(info) => info,
            Err(error) => {
                replies::proxy_error(batch.local(), &error);
                return batch.end_local();
            }
        };
        if &info.mode[..] == b"cluster" && index != 0 {
            return batch.reply(replies::SELECT_IN_CLUSTER);
        }
        // Without `CONFIG GET databases` (an ACL may forbid it) assume Redis's default.
        let databases = info.databases.unwrap_or(16);
        match u32::try_from(index) {
            Ok(db) if db < databases => {
                self.db = db;
                batch.reply(replies::OK);
            }
            _ => batch.reply(replies::DB_OUT_OF_RANGE),
        }
    }

    fn client(&mut self, request: &Request, batch: &mut Batch) -> Flow {
        let args = &request.args[..];
        let Some(sub) = command::client_subcommand(&args[1]) else {
            replies::unknown_subcommand(batch.local(), &args[0], &args[1]);
            batch.end_local();
            return Flow::Continue;
        };
        if !command::arity_ok(sub.arity, args.len()) {
            replies::wrong_arity(batch.local(), sub.full_name);
            batch.end_local();
            return Flow::Continue;
        }
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        self.client_sub(sub, request, batch)
    }

    fn client_sub(
        &mut self,
        sub: command::Subcommand,
        request: &Request,
        batch: &mut Batch,
    ) -> Flow {
        let args = &request.args[..];
        match sub.kind {
            ClientSub::GetName => {
                match &self.name {
                    Some(name) => encode::bulk(batch.local(), name),
                    None => encode::null(batch.local(), self.proto),
                }
                batch.end_local();
            }
            ClientSub::SetName => {
                if !valid_client_attribute(&args[2]) {
                    batch.reply(replies::BAD_CLIENT_NAME);
                    return Flow::Continue;
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                batch.reply(replies::OK);
            }
            ClientSub::Id => {
                encode::integer(batch.local(), self.id as i64);
                batch.end_local();
            }
            ClientSub::SetInfo => self.client_setinfo(args, batch),
            ClientSub::Info => {
                self.client_info(batch.local());
                batch.end_local();
            }
            ClientSub::Tracking if args[2].eq_ignore_ascii_case(b"on") => {
                return self.client_tracking_on(sub, request, batch);
            }
            ClientSub::Reply if !args[2].eq_ignore_ascii_case(b"on") => {
                return Flow::Relay(request.clone());
            }
            ClientSub::Refused => {
                replies::unsupported(batch.local(), sub.full_name, refusal::SHARED_FLAG);
                batch.end_local_as(Some(ErrorClass::Unsupported));
            }
            ClientSub::Tracking | ClientSub::Reply | ClientSub::Forward => {
                if self.needs_pin() {
                    batch.pin_required = true;
                }
                batch.forward(encode::command(args), self.conn_state());
            }
        }
        Flow::Continue
    }

    /// CLIENT SETINFO LIB-NAME|LIB-VER <value>.
    fn client_setinfo(&mut self, args: &[Bytes], batch: &mut Batch) {
        let slot = if args[2].eq_ignore_ascii_case(b"lib-name") {
            &mut self.lib_name
        } else if args[2].eq_ignore_ascii_case(b"lib-ver") {
            &mut self.lib_ver
        } else {
            replies::setinfo_unknown(batch.local(), &args[2]);
            return batch.end_local();
        };
        if !valid_client_attribute(&args[3]) {
            replies::setinfo_bad_value(batch.local(), &args[2]);
            return batch.end_local();
        }
        *slot = (!args[3].is_empty()).then(|| args[3].clone());
        batch.reply(replies::OK);
    }

    /// CLIENT INFO: this client's line, a bulk string (RESP2) or a verbatim string (RESP3).
    fn client_info(&self, out: &mut BytesMut) {
        let line = self.info_line();
        match self.proto {
            Proto::Resp2 => encode::bulk(out, &line),
            Proto::Resp3 => {
                out.extend_from_slice(b"=");
                out.extend_from_slice(itoa::Buffer::new().format(line.len() + 4).as_bytes());
                out.extend_from_slice(b"\r\ntxt:");
                out.extend_from_slice(&line);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// CLIENT TRACKING ON: relayed on a dedicated connection, except with REDIRECT (the
    /// connection it names is shared) or in cluster mode (keys of the other masters would
    /// be read without tracking: a client cache would go stale without a word).
    fn client_tracking_on(
        &mut self,
        sub: command::Subcommand,
        request: &Request,
        batch: &mut Batch,
    ) -> Flow {
        let redirect = request
            .args
            .iter()
            .skip(3)
            .any(|a| a.eq_ignore_ascii_case(b"redirect"));
        let why = if redirect {
            refusal::TRACKING_REDIRECT
        } else if self.shared.cluster.is_some() {
            refusal::TRACKING_IN_CLUSTER
        } else {
            return Flow::Relay(request.clone());
        };
        replies::unsupported(batch.local(), sub.full_name, why);
        batch.end_local_as(Some(ErrorClass::Unsupported));
        Flow::Continue
    }

    /// The `CLIENT INFO` line, in Redis 7.2's field order, with this session's own values
    /// where the proxy has them and zero for the memory accounting it does not keep.
    fn info_line(&self) -> Vec<u8> {
        let text = |v: &Option<Bytes>| {
            v.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let user = &*self.user;
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags=N db={} sub=0 psub=0 \
             ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 \
             omem=0 tot-mem=0 events=r cmd=client|info user={} redir=-1 resp={} lib-name={} \
             lib-ver={}\n",
            self.id,
            self.peer,
            self.local_addr,
            self.fd,
            text(&self.name),
            self.created.elapsed().as_secs(),
            self.last_activity.elapsed().as_secs(),
            self.db,
            user,
            self.proto.number(),
            text(&self.lib_name),
            text(&self.lib_ver),
        )
        .into_bytes()
    }
}

/// Redis's `validateClientAttr`: printable ASCII without spaces (`!`..=`~`), read as a C
/// string (it stops at a NUL).
pub(super) fn valid_client_attribute(value: &[u8]) -> bool {
    value
        .iter()
        .take_while(|&&b| b != 0)
        .all(|&b| (b'!'..=b'~').contains(&b))
}

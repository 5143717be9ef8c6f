//! The commands a session answers itself, with Redis's exact replies: AUTH (as the
//! ambassador's users, or handed to Redis for its own users), HELLO, SELECT, QUIT, RESET,
//! EXEC/DISCARD/UNWATCH outside a transaction, and the CLIENT subcommands that concern the
//! connection (SETNAME, GETNAME, ID, INFO, SETINFO, NO-EVICT, NO-TOUCH; LIST and KILL over
//! the application's connections, from the registry in `clients`; TRACKING and REPLY,
//! which switch to relay mode). The order of checks is Redis's: unknown subcommand, arity,
//! then authentication.

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::clients::{self, ClientType, KillFilter, Layout, Own};
use super::state::{Access, Flow, Session, request_bytes};
use crate::command::{self, ClientSub, Local};
use crate::metrics::{self, ErrorClass};
use crate::protocol::number::{parse_i32, parse_i64};
use crate::protocol::{Proto, Request, encode};
use crate::replies::{self, refusal};
use crate::upstream::{AuthFailure, ConnState, ServerInfo, Upstream, UpstreamError};
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
            Local::Auth => {
                self.feed_monitors(args);
                Box::pin(self.auth(args, batch)).await;
            }
            Local::Hello => {
                self.feed_monitors(args);
                Box::pin(self.hello(args, batch)).await;
            }
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
            Local::Client => return Box::pin(self.client(request, batch)).await,
            _ if self.requires_auth() => batch.reply(replies::NOAUTH),
            Local::Select => {
                Box::pin(self.select(&args[1], batch)).await;
                // As Redis, which feeds its monitors after the command ran: the new database.
                self.feed_monitors(args);
            }
            Local::Info => return Box::pin(self.info(request, batch)).await,
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

    /// Authenticates the client: as one of the ambassador's users (through its own
    /// upstream identity when it has one), or — with `upstream_auth` (always so without a
    /// `[client]` section) and a name other than `default` — as a Redis user, checked by
    /// the server itself, whose commands then go to the server as that user (its ACLs
    /// apply). `Err`: the reply to give.
    async fn log_in(&mut self, username: &[u8], password: &[u8]) -> Result<(), Bytes> {
        // The address only, to compare (a raw pointer would not be `Send`).
        let before = std::ptr::from_ref::<Upstream>(self.upstream()) as usize;
        let result = Box::pin(self.authenticate_as(username, password)).await;
        let after = std::ptr::from_ref::<Upstream>(self.upstream()) as usize;
        if result.is_ok() && before != after {
            self.rebind = true;
        }
        result
    }

    async fn authenticate_as(&mut self, username: &[u8], password: &[u8]) -> Result<(), Bytes> {
        if let Some(user) = self.shared.authenticate(username, password) {
            self.authenticated = true;
            self.access = self.shared.access(&user);
            self.identity = self.shared.identities.configured(&user);
            self.user_commands = self.shared.user_commands(&user);
            self.user = user;
            self.publish_text();
            return Ok(());
        }
        let as_redis_user = self.shared.upstream_auth
            && self.shared.cluster.is_none()
            && !self.shared.client_auth.knows(username)
            && !username.eq_ignore_ascii_case(crate::auth::DEFAULT_USER.as_bytes());
        let name = match std::str::from_utf8(username) {
            Ok(name) if as_redis_user => name,
            _ => return Err(Bytes::from_static(replies::WRONGPASS)),
        };
        let shared = Arc::clone(&self.shared);
        let address = self.peer.ip();
        let delay = shared.login_throttle.delay(address);
        if !delay.is_zero() {
            tracing::debug!(peer = %self.peer, ?delay, "repeated failed logins: waiting");
            tokio::time::sleep(delay).await;
        }
        let logged_in = Box::pin(shared.identities.log_in(
            &shared.upstream,
            name,
            password,
            self.db,
        ));
        match logged_in.await {
            Ok(upstream) => {
                shared.login_throttle.succeeded(address);
                self.authenticated = true;
                self.user = Arc::from(name);
                self.access = Access::Any;
                self.identity = Some(upstream);
                self.user_commands = shared.user_commands(crate::metrics::UPSTREAM_USER_LABEL);
                self.publish_text();
                Ok(())
            }
            Err(UpstreamError::AuthFailed(AuthFailure::Refused(text))) => {
                shared.login_throttle.failed(address);
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
        self.publish_text();
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

    async fn client(&mut self, request: &Request, batch: &mut Batch) -> Flow {
        let args = &request.args[..];
        let Some(sub) = command::client_subcommand(&args[1]) else {
            replies::unknown_subcommand(batch.local(), &args[0], &args[1]);
            batch.end_local();
            return Flow::Continue;
        };
        self.client_sub = Some(sub.index);
        // CLIENT NO-TOUCH came with Redis 7.2: an older server does not know it.
        if sub.kind == ClientSub::NoTouch && self.layout().await < Layout::V7_2 {
            replies::unknown_subcommand(batch.local(), &args[0], &args[1]);
            batch.end_local();
            return Flow::Continue;
        }
        if !command::arity_ok(sub.arity, args.len()) {
            replies::wrong_arity(batch.local(), sub.full_name);
            batch.end_local();
            return Flow::Continue;
        }
        if self.requires_auth() {
            batch.reply(replies::NOAUTH);
            return Flow::Continue;
        }
        Box::pin(self.client_sub(sub, request, batch)).await
    }

    async fn client_sub(
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
                self.publish_text();
                batch.reply(replies::OK);
            }
            ClientSub::Id => {
                encode::integer(batch.local(), self.id as i64);
                batch.end_local();
            }
            ClientSub::SetInfo => self.client_setinfo(args, batch),
            ClientSub::Info => {
                let layout = self.layout().await;
                self.publish_own(sub);
                let mut line = Vec::new();
                let live = |id: u64| self.shared.clients.get(id).is_some();
                self.client
                    .line(&mut line, layout, Some(own_request(request)), &live);
                line.push(b'\n');
                verbatim(batch.local(), self.proto, &line);
                batch.end_local();
            }
            ClientSub::List => self.client_list(sub, request, batch).await,
            ClientSub::Kill => return self.client_kill(request, batch).await,
            ClientSub::NoEvict => self.client_no_evict(args, batch),
            ClientSub::Unblock => self.client_unblock(args, batch),
            ClientSub::NoTouch => self.client_no_touch(sub, request, batch),
            ClientSub::Tracking => return self.client_tracking(sub, request, batch),
            ClientSub::Reply if !args[2].eq_ignore_ascii_case(b"on") => {
                return Flow::Relay(request.clone());
            }
            ClientSub::Reply
            | ClientSub::GetRedir
            | ClientSub::TrackingInfo
            | ClientSub::Forward => {
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
        self.publish_text();
        batch.reply(replies::OK);
    }

    /// INFO: Redis's own reply, where `connected_clients` counts the application's
    /// connections (Redis would count the ambassador's). What is planned before it runs
    /// first, so that it reports their effects. In cluster mode it goes to a node as
    /// before.
    async fn info(&mut self, request: &Request, batch: &mut Batch) -> Flow {
        if let Some(cluster) = self.shared.cluster.clone() {
            return self.route(cluster, request.clone(), batch, false).await;
        }
        if batch.has_upstream() {
            return Flow::Defer(request.clone());
        }
        let ask = request_bytes(request.clone());
        match self.upstream().call(self.conn_state(), vec![ask], 1).await {
            Ok(replies) => {
                let count = self.shared.clients.len();
                for (reply, _) in replies {
                    let patched = clients::patch_connected_clients(&reply, count);
                    batch.local().extend_from_slice(&patched);
                }
                batch.end_local();
            }
            Err(error) => {
                error.reply_to(batch.local());
                batch.end_local_as(Some(error.class()));
            }
        }
        Flow::Continue
    }

    /// Which Redis's CLIENT LIST line to print: the upstream's (Redis 7.2's when the
    /// upstream cannot say).
    pub(super) async fn layout(&self) -> Layout {
        match self.shared.upstream.info().await {
            Ok(info) => Layout::for_version(&info.version),
            Err(_) => Layout::V7_2,
        }
    }

    /// Brings this client's published state up to the moment (its own line shows the
    /// command being run, as Redis's does).
    fn publish_own(&self, sub: command::Subcommand) {
        self.client
            .set_command(command::id(b"client"), Some(sub.index));
        self.publish_state();
    }

    /// CLIENT LIST [TYPE <type> | ID <id> …]: the application's connections, each
    /// as Redis prints its own clients.
    async fn client_list(
        &mut self,
        sub: command::Subcommand,
        request: &Request,
        batch: &mut Batch,
    ) {
        let args = &request.args[..];
        let layout = self.layout().await;
        let own = own_request(request);
        let clients = &self.shared.clients;
        let text = if args.len() == 4 && args[2].eq_ignore_ascii_case(b"type") {
            let Some(kind) = ClientType::parse(&args[3]) else {
                replies::unknown_client_type(batch.local(), &args[3]);
                return batch.end_local();
            };
            self.publish_own(sub);
            clients.list(Some(kind), layout, self.id, own)
        } else if args.len() > 3 && args[2].eq_ignore_ascii_case(b"id") {
            let mut ids = Vec::with_capacity(args.len() - 3);
            for arg in &args[3..] {
                let Some(id) = parse_i64(arg) else {
                    return batch.reply(replies::INVALID_CLIENT_ID);
                };
                // A negative id names no client.
                ids.extend(u64::try_from(id).ok());
            }
            self.publish_own(sub);
            clients.list_ids(&ids, layout, self.id, own)
        } else if args.len() != 2 {
            return batch.reply(replies::SYNTAX_ERROR);
        } else {
            self.publish_own(sub);
            clients.list(None, layout, self.id, own)
        };
        verbatim(batch.local(), self.proto, &text);
        batch.end_local();
    }

    /// CLIENT KILL <addr> | CLIENT KILL <filter> <value> …, as Redis's `clientCommand`:
    /// the options in order (the first wrong one answers), then every match ends. The
    /// caller itself closes after its reply.
    async fn client_kill(&mut self, request: &Request, batch: &mut Batch) -> Flow {
        let args = &request.args[..];
        let mut filter = KillFilter::default();
        if args.len() == 3 {
            // The old form: one address, and the caller may kill itself.
            filter.addr = Some(args[2].clone());
        } else {
            filter.skip_me = true;
            for pair in args[2..].chunks(2) {
                let [option, value] = pair else {
                    return self.kill_refused(batch, replies::SYNTAX_ERROR);
                };
                if option.eq_ignore_ascii_case(b"id") {
                    match parse_i64(value) {
                        Some(id) if id >= 1 => filter.id = u64::try_from(id).ok(),
                        _ => return self.kill_refused(batch, replies::CLIENT_ID_NOT_POSITIVE),
                    }
                } else if option.eq_ignore_ascii_case(b"type") {
                    let Some(kind) = ClientType::parse(value) else {
                        replies::unknown_client_type(batch.local(), value);
                        batch.end_local();
                        return Flow::Continue;
                    };
                    filter.kind = Some(kind);
                } else if option.eq_ignore_ascii_case(b"addr") {
                    filter.addr = Some(value.clone());
                } else if option.eq_ignore_ascii_case(b"laddr") {
                    filter.laddr = Some(value.clone());
                } else if option.eq_ignore_ascii_case(b"user") {
                    if !self.user_exists(value).await {
                        replies::no_such_user(batch.local(), value);
                        batch.end_local();
                        return Flow::Continue;
                    }
                    filter.user = Some(value.clone());
                } else if option.eq_ignore_ascii_case(b"skipme") {
                    filter.skip_me = if value.eq_ignore_ascii_case(b"yes") {
                        true
                    } else if value.eq_ignore_ascii_case(b"no") {
                        false
                    } else {
                        return self.kill_refused(batch, replies::SYNTAX_ERROR);
                    };
                } else if option.eq_ignore_ascii_case(b"maxage")
                    && self.layout().await >= Layout::V7_4
                {
                    match parse_i64(value) {
                        Some(age) => filter.max_age = Some(u64::try_from(age).unwrap_or(0)),
                        None => return self.kill_refused(batch, replies::NOT_AN_INTEGER),
                    }
                } else {
                    return self.kill_refused(batch, replies::SYNTAX_ERROR);
                }
            }
        }
        if filter.max_age == Some(0) {
            filter.max_age = None;
        }
        let (killed, me) = self.shared.clients.kill(&filter, self.id);
        if args.len() == 3 {
            batch.reply(if killed == 0 {
                replies::NO_SUCH_CLIENT
            } else {
                replies::OK
            });
        } else {
            encode::integer(batch.local(), i64::try_from(killed).unwrap_or(i64::MAX));
            batch.end_local();
        }
        if me {
            self.client.set_flag(clients::flag::CLOSE_AFTER_REPLY, true);
            if self.needs_pin() {
                self.drop_pin = true;
            }
            return Flow::Close;
        }
        Flow::Continue
    }

    fn kill_refused(&mut self, batch: &mut Batch, reply: &[u8]) -> Flow {
        batch.reply(reply);
        Flow::Continue
    }

    /// Whether Redis knows a user (CLIENT KILL USER): one the ambassador knows or a
    /// client runs as, else Redis's own answer to `ACL GETUSER` (a user it will not
    /// describe counts as unknown).
    async fn user_exists(&self, name: &[u8]) -> bool {
        if name == crate::auth::DEFAULT_USER.as_bytes()
            || self.shared.client_auth.knows(name)
            || self.shared.clients.has_user(name)
        {
            return true;
        }
        let ask = encode::command(&[&b"ACL"[..], b"GETUSER", name]);
        match self
            .shared
            .upstream
            .call(ConnState::INITIAL, vec![ask], 1)
            .await
        {
            Ok(replies) => replies.first().is_some_and(|(reply, _)| {
                (reply.starts_with(b"*") && !reply.starts_with(b"*-1")) || reply.starts_with(b"%")
            }),
            Err(_) => false,
        }
    }

    /// CLIENT UNBLOCK <id> [TIMEOUT|ERROR]: `:1` when client `id` of the ambassador waits
    /// in a blocking command it can end (see `execute_blocking`), else `:0`; Redis's checks
    /// in Redis's order.
    fn client_unblock(&mut self, args: &[Bytes], batch: &mut Batch) {
        if args.len() > 4 {
            replies::subcommand_syntax(batch.local(), &args[0], &args[1]);
            return batch.end_local();
        }
        let error = match args.get(3) {
            None => false,
            Some(reason) if reason.eq_ignore_ascii_case(b"timeout") => false,
            Some(reason) if reason.eq_ignore_ascii_case(b"error") => true,
            Some(_) => return batch.reply(replies::UNBLOCK_REASON),
        };
        let Some(id) = parse_i64(&args[2]) else {
            return batch.reply(replies::NOT_AN_INTEGER);
        };
        let unblocked = u64::try_from(id)
            .ok()
            .and_then(|id| self.shared.clients.get(id))
            .is_some_and(|target| target.unblock(error));
        encode::integer(batch.local(), i64::from(unblocked));
        batch.end_local();
    }

    /// CLIENT NO-EVICT ON|OFF: kept for this client (`e` in CLIENT LIST) and applied on
    /// its dedicated connection when it relays (see `relay`).
    fn client_no_evict(&mut self, args: &[Bytes], batch: &mut Batch) {
        let Some(on) = on_off(&args[2]) else {
            return batch.reply(replies::SYNTAX_ERROR);
        };
        self.no_evict = on;
        self.client.set_flag(clients::flag::NO_EVICT, on);
        batch.reply(replies::OK);
    }

    /// CLIENT NO-TOUCH ON|OFF: while it is on, the client's commands run on a dedicated
    /// connection carrying the flag, so that Redis leaves its keys' access times alone
    /// exactly as it would for this client; OFF goes there too, and the connection then
    /// returns to its pool clean. Refused in cluster mode, where a client's commands go to
    /// every node.
    fn client_no_touch(&mut self, sub: command::Subcommand, request: &Request, batch: &mut Batch) {
        let Some(on) = on_off(&request.args[2]) else {
            return batch.reply(replies::SYNTAX_ERROR);
        };
        if self.shared.cluster.is_some() {
            replies::unsupported(batch.local(), sub.full_name, refusal::NO_TOUCH_IN_CLUSTER);
            return batch.end_local_as(Some(ErrorClass::Unsupported));
        }
        if on == self.no_touch {
            return batch.reply(replies::OK);
        }
        // ON: the flag makes `needs_pin` true, so this and what follows run on a
        // dedicated connection. OFF: sent where the flag is, then the pin is released.
        batch.pin_required = true;
        batch.forward(request_bytes(request.clone()), self.conn_state());
        self.no_touch = on;
        self.client.set_flag(clients::flag::NO_TOUCH, on);
    }

    /// CLIENT TRACKING: ON is relayed on a dedicated connection (where a REDIRECT id is
    /// turned into the target's upstream connection: see `relay`); refused in cluster
    /// mode (keys of the other masters would be read without tracking: a client cache
    /// would go stale without a word). OFF outside relay mode concerns a shared connection
    /// that tracks nothing: a REDIRECT is checked here, as Redis checks it, and dropped.
    fn client_tracking(
        &mut self,
        sub: command::Subcommand,
        request: &Request,
        batch: &mut Batch,
    ) -> Flow {
        let options = clients::tracking_options(&request.args);
        if options.on {
            if self.shared.cluster.is_some() {
                replies::unsupported(batch.local(), sub.full_name, refusal::TRACKING_IN_CLUSTER);
                batch.end_local_as(Some(ErrorClass::Unsupported));
                return Flow::Continue;
            }
            return Flow::Relay(request.clone());
        }
        let mut args = request.args.clone();
        if let Some((at, id)) = options.redirect {
            let exists = u64::try_from(id).is_ok_and(|id| self.shared.clients.get(id).is_some());
            if !exists {
                batch.reply(replies::REDIRECT_TARGET_MISSING);
                return Flow::Continue;
            }
            if options.twice {
                batch.reply(replies::REDIRECT_TWICE);
                return Flow::Continue;
            }
            args.drain(at - 1..=at);
        }
        if self.needs_pin() {
            batch.pin_required = true;
        }
        batch.forward(encode::command(&args), self.conn_state());
        Flow::Continue
    }
}

/// `ON` or `OFF`, case-insensitively.
fn on_off(arg: &[u8]) -> Option<bool> {
    if arg.eq_ignore_ascii_case(b"on") {
        Some(true)
    } else if arg.eq_ignore_ascii_case(b"off") {
        Some(false)
    } else {
        None
    }
}

/// The request being answered, as Redis counts it in its caller's own CLIENT LIST line:
/// its bytes on the wire (the query buffer) and its arguments' lengths.
fn own_request(request: &Request) -> Own {
    let argv_mem = request.args.iter().map(|a| a.len()).sum();
    let qbuf = match &request.canonical {
        Some(frame) => frame.len(),
        None => encode::command(&request.args).len(),
    };
    Own { qbuf, argv_mem }
}

/// A text reply as Redis's `addReplyVerbatim` writes it: a bulk string in RESP2, a
/// verbatim string (`txt`) in RESP3.
fn verbatim(out: &mut BytesMut, proto: Proto, text: &[u8]) {
    match proto {
        Proto::Resp2 => encode::bulk(out, text),
        Proto::Resp3 => {
            out.extend_from_slice(b"=");
            out.extend_from_slice(itoa::Buffer::new().format(text.len() + 4).as_bytes());
            out.extend_from_slice(b"\r\ntxt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `CLIENT NO-TOUCH on`, sent ahead of a NO-TOUCH client's commands on a new dedicated
/// connection.
pub(super) const NO_TOUCH_ON: Bytes =
    Bytes::from_static(b"*3\r\n$6\r\nCLIENT\r\n$8\r\nNO-TOUCH\r\n$2\r\non\r\n");

impl Session {
    /// Shows a command the ambassador answers itself (AUTH, HELLO, SELECT) to the clients
    /// in MONITOR mode, as Redis's `replicationFeedMonitors` would: the time, the database
    /// and the client's address, then the arguments quoted, passwords redacted.
    fn feed_monitors(&self, args: &[Bytes]) {
        if self.shared.monitors.receiver_count() == 0 {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = format!(
            "+{}.{:06} [{} {}]",
            now.as_secs(),
            now.subsec_micros(),
            self.db,
            self.peer
        )
        .into_bytes();
        let is_auth = args[0].eq_ignore_ascii_case(b"auth");
        let is_hello = args[0].eq_ignore_ascii_case(b"hello");
        // AUTH's arguments, and the two after HELLO's AUTH.
        let redacted = |i: usize| {
            (is_auth && i > 0)
                || (is_hello
                    && ((i >= 2 && args[i - 1].eq_ignore_ascii_case(b"auth"))
                        || (i >= 3 && args[i - 2].eq_ignore_ascii_case(b"auth"))))
        };
        for (i, arg) in args.iter().enumerate() {
            line.push(b' ');
            if redacted(i) {
                line.extend_from_slice(b"\"(redacted)\"");
            } else {
                quote_repr(&mut line, arg);
            }
        }
        line.extend_from_slice(b"\r\n");
        let _ = self.shared.monitors.send((self.id, Bytes::from(line)));
    }
}

/// Redis's `sdscatrepr`: a quoted string with `\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b`
/// and `\xNN` escapes.
fn quote_repr(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'"');
    for &b in arg {
        match b {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            7 => out.extend_from_slice(b"\\a"),
            8 => out.extend_from_slice(b"\\b"),
            b if b.is_ascii_graphic() || b == b' ' => out.push(b),
            b => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    out.push(b'"');
}

/// Redis's `validateClientAttr`: printable ASCII without spaces (`!`..=`~`), read as a C
/// string (it stops at a NUL).
pub(super) fn valid_client_attribute(value: &[u8]) -> bool {
    value
        .iter()
        .take_while(|&&b| b != 0)
        .all(|&b| (b'!'..=b'~').contains(&b))
}

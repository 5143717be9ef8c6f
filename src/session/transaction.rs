//! MULTI … EXEC as Redis runs it, through the proxy. Inside MULTI most commands are queued
//! upstream (on the client's dedicated connection); the ones the proxy answers itself
//! (AUTH, HELLO, CLIENT SETNAME, …) are queued here, `+QUEUED` answered, and run at EXEC
//! time; a refused command aborts the transaction at EXEC (`-EXECABORT`), as in Redis.
//!
//! Finishing a transaction whose EXEC needs the session: EXEC's array from the upstream is
//! taken apart element by element (with the reply scanner), the local results are run now
//! and spliced into their places, and a successful SELECT moves the client.

use bytes::{Bytes, BytesMut};

use super::batch::Batch;
use super::route::BeforeExec;
use super::state::{Flow, Queued, Session, request_bytes};
use crate::command::{self, ClientSub, Kind, Local};
use crate::metrics::ErrorClass;
use crate::protocol::number::parse_i32;
use crate::protocol::reply::split_array;
use crate::protocol::{Request, encode};
use crate::replies::{self, refusal};

impl Session {
    /// A command while MULTI is open: queued upstream, queued locally, or run at once
    /// (EXEC, DISCARD, QUIT, RESET), as Redis's processCommand does.
    pub(super) fn handle_in_multi(
        &mut self,
        kind: Kind,
        name: &str,
        request: Request,
        batch: &mut Batch,
    ) -> Flow {
        if let Some(error) = self.multi.as_ref().and_then(|m| m.detached.clone()) {
            return self.handle_detached(kind, error, batch);
        }
        match kind {
            Kind::Local(Local::Exec) => self.plan_exec(request, batch),
            Kind::Local(Local::Discard) => {
                self.multi = None;
                self.watching = false;
                if std::mem::take(&mut self.binding.multi_pending) {
                    // Cluster mode: MULTI never left the proxy.
                    self.binding.held.clear();
                    batch.reply(replies::OK);
                    return Flow::Continue;
                }
                self.forward(request, batch)
            }
            Kind::Local(Local::Quit) => {
                self.drop_pin = true;
                batch.reply(replies::OK);
                Flow::Close
            }
            Kind::Local(Local::Reset) => {
                // The upstream transaction is abandoned with the connection; planning
                // stops so nothing after RESET reaches that connection.
                self.drop_pin = true;
                self.reset();
                batch.reply(replies::RESET);
                batch.barrier = true;
                Flow::Continue
            }
            Kind::Local(Local::Select) => {
                let index = parse_i32(&request.args[1]).and_then(|i| u32::try_from(i).ok());
                if let Some(multi) = self.multi.as_mut() {
                    multi.queue.push(Queued::Select(index));
                }
                batch.pin_required = true;
                batch.forward(request_bytes(request), self.conn_state());
                Flow::Continue
            }
            Kind::Local(Local::Ping | Local::Echo | Local::Unwatch) => {
                self.queue_forward(request, batch)
            }
            Kind::Local(Local::Client) => self.client_in_multi(request, batch),
            Kind::Local(Local::Auth | Local::Hello) => self.queue_local(request, batch),
            Kind::Subscribe(_) => self.refuse_in_multi(name, refusal::IN_MULTI, batch),
            // Redis answers these at once and queues nothing (nor aborts the transaction):
            // forwarded and queued, they would put EXEC's array out of step with the queue.
            Kind::Multi => {
                batch.reply(replies::MULTI_NESTED);
                Flow::Continue
            }
            Kind::Watch => {
                batch.reply(replies::WATCH_IN_MULTI);
                Flow::Continue
            }
            // Blocking commands and MONITOR are queued and run (or fail) inside EXEC, as in
            // Redis.
            _ => self.queue_forward(request, batch),
        }
    }

    /// A command inside a transaction that has no upstream connection (see
    /// `Multi::detached`): nothing is sent; EXEC aborts with the reason.
    fn handle_detached(
        &mut self,
        kind: Kind,
        error: crate::upstream::UpstreamError,
        batch: &mut Batch,
    ) -> Flow {
        match kind {
            Kind::Local(Local::Exec) => {
                self.multi = None;
                replies::execabort_because(batch.local(), &error);
                batch.end_local();
            }
            Kind::Local(Local::Discard) => {
                self.multi = None;
                batch.reply(replies::OK);
            }
            Kind::Local(Local::Quit) => {
                batch.reply(replies::OK);
                return Flow::Close;
            }
            Kind::Local(Local::Reset) => {
                self.reset();
                batch.reply(replies::RESET);
            }
            Kind::Multi => batch.reply(replies::MULTI_NESTED),
            Kind::Watch => batch.reply(replies::WATCH_IN_MULTI),
            _ => batch.reply(replies::QUEUED),
        }
        Flow::Continue
    }

    /// EXEC: the transaction ends. An aborted one is discarded upstream and answered
    /// `-EXECABORT`; one with local commands or SELECTs queued is held for finishing.
    fn plan_exec(&mut self, request: Request, batch: &mut Batch) -> Flow {
        match self.before_exec(batch) {
            BeforeExec::Ready => {}
            BeforeExec::Defer => return Flow::Defer(request),
            BeforeExec::Replied => {
                self.multi = None;
                self.watching = false;
                return Flow::Continue;
            }
        }
        let Some(multi) = self.multi.take() else {
            return Flow::Continue;
        };
        self.watching = false;
        batch.pin_required = true;
        if multi.error {
            // End the upstream transaction, answer as Redis does.
            batch.forward_swallowed(encode::command(&[&b"DISCARD"[..]]), self.conn_state());
            batch.reply(replies::EXECABORT);
            return Flow::Continue;
        }
        if multi.needs_finishing() {
            if multi.queue.iter().any(|q| matches!(q, Queued::Select(_))) {
                // Which SELECT ran is known only from EXEC's reply.
                batch.db_unknown_after();
            }
            self.exec_queue = Some(multi.queue);
            batch.forward_held(request_bytes(request), self.conn_state());
            return Flow::Continue;
        }
        self.forward(request, batch)
    }

    /// A CLIENT subcommand inside MULTI: Redis's checks first, then queued upstream or
    /// locally; the ones that change the connection's mode are refused.
    fn client_in_multi(&mut self, request: Request, batch: &mut Batch) -> Flow {
        let Some(sub) = command::client_subcommand(&request.args[1]) else {
            replies::unknown_subcommand(batch.local(), &request.args[0], &request.args[1]);
            batch.end_local();
            self.flag_multi();
            return Flow::Continue;
        };
        if !command::arity_ok(sub.arity, request.args.len()) {
            replies::wrong_arity(batch.local(), sub.full_name);
            batch.end_local();
            self.flag_multi();
            return Flow::Continue;
        }
        match sub.kind {
            ClientSub::Forward | ClientSub::GetRedir | ClientSub::TrackingInfo => {
                self.queue_forward(request, batch)
            }
            ClientSub::Tracking | ClientSub::Reply | ClientSub::NoTouch => {
                self.refuse_in_multi(sub.full_name, refusal::IN_MULTI, batch)
            }
            _ => self.queue_local(request, batch),
        }
    }

    /// Refuses a command inside MULTI: the transaction will abort at EXEC.
    fn refuse_in_multi(&mut self, name: &str, why: &str, batch: &mut Batch) -> Flow {
        replies::unsupported(batch.local(), name, why);
        batch.end_local_as(Some(ErrorClass::Unsupported));
        self.flag_multi();
        Flow::Continue
    }

    /// Queues a command upstream.
    pub(super) fn queue_forward(&mut self, request: Request, batch: &mut Batch) -> Flow {
        if self.multi.as_ref().is_some_and(|m| m.detached.is_some()) {
            // No upstream transaction to queue it in (see `Multi::detached`).
            batch.reply(replies::QUEUED);
            return Flow::Continue;
        }
        if let Some(multi) = self.multi.as_mut() {
            multi.queue.push(Queued::Forwarded);
        }
        self.forward(request, batch)
    }

    /// Queues a command the proxy answers itself, to run at EXEC.
    fn queue_local(&mut self, request: Request, batch: &mut Batch) -> Flow {
        batch.reply(replies::QUEUED);
        if let Some(multi) = self.multi.as_mut() {
            multi.queue.push(Queued::Local(request));
        }
        Flow::Continue
    }

    /// Writes EXEC's reply with the locally queued commands run and spliced in (see the
    /// module's comment).
    pub(super) async fn finish_exec(
        &mut self,
        reply: &Bytes,
        queue: Vec<Queued>,
        out: &mut BytesMut,
    ) {
        let Some(elements) = split_array(reply) else {
            // Null (a WATCHed key changed) or an error (EXECABORT): nothing ran.
            out.extend_from_slice(reply);
            return;
        };
        let forwarded = queue
            .iter()
            .filter(|q| !matches!(q, Queued::Local(_)))
            .count();
        if elements.len() != forwarded {
            tracing::error!(
                expected = forwarded,
                got = elements.len(),
                "EXEC reply does not match the queued commands; passing it through"
            );
            out.extend_from_slice(reply);
            return;
        }
        encode::array_header(out, queue.len());
        let mut upstream = elements.into_iter();
        for queued in queue {
            match queued {
                Queued::Forwarded => out.extend_from_slice(&upstream.next().unwrap_or_default()),
                Queued::Select(index) => {
                    let element = upstream.next().unwrap_or_default();
                    if &element[..] == b"+OK\r\n" {
                        if let Some(index) = index {
                            self.db = index;
                        }
                    }
                    out.extend_from_slice(&element);
                }
                Queued::Local(request) => {
                    let mut scratch = Batch::new(1);
                    // MULTI is closed by now, so this answers as outside a transaction.
                    let _ = self.handle(request, &mut scratch).await;
                    out.extend_from_slice(&scratch.into_local());
                }
            }
        }
    }
}

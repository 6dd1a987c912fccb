//! Masking on the server half: results of sessions with `mask:` rules are
//! looked at message by message and rewritten (see `proxy/mask.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use portcullis_masking::{Expressions, MaskBuf};
use tokio::io::WriteHalf;

use crate::codec::backend::{parse_error_fields, sqlstate, ErrorFields};
use crate::codec::rows::parse_row_description;
use crate::codec::{peek_frame_len, CodecError};
use crate::proxy::mask::lineage::{lineage, settle, Lineage};

use crate::proxy::mask::{SessionMask, Shape, Tally};
use crate::proxy::stream::MaybeTls;

use super::super::{End, Expect, Tracker};
use super::{open_tracker, write, ServerSide, MAX_BACKEND_MESSAGE};

/// The masking side of a session's results.
pub(super) struct MaskState<'a> {
    session: &'a SessionMask,
    /// The shape of the simple-query result set being streamed.
    current: Option<Arc<Shape>>,
    /// Shapes of described portals, for their Executes' rows.
    portals: HashMap<String, Arc<Shape>>,
    copy: CopyOut,
    /// Holds each masked value on its way into the output.
    buf: MaskBuf,
}

/// What is being done with a COPY TO STDOUT in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyOut {
    None,
    /// Text or CSV: each line is scanned by the detectors.
    Text,
    /// Output that cannot be masked (binary, or of a statement that may
    /// read a declared column): its data is dropped and the command ends
    /// in this error instead.
    Refused(&'static str),
}

const BINARY_COPY: &str =
    "binary COPY output cannot be masked; use COPY ... TO STDOUT in text or CSV format, or SELECT";
const DECLARED_COPY: &str = "COPY TO STDOUT output cannot be masked per column and this COPY may read a masked column (through a view or a function); use SELECT, whose results the gateway masks";

/// What masking does with one upstream message.
enum Masked {
    Keep,
    Drop,
    Replace(BytesMut),
    /// The rewritten message is already at the end of the output.
    Appended,
}

impl<'a> MaskState<'a> {
    pub(super) fn new(session: &'a SessionMask) -> Self {
        Self {
            session,
            current: None,
            portals: HashMap::new(),
            copy: CopyOut::None,
            buf: MaskBuf::default(),
        }
    }
}

impl ServerSide<'_> {
    /// The masking session's relay: every message is looked at, and the
    /// output is assembled in one buffer per read.
    pub(super) async fn relay_masked(
        &mut self,
        buf: &mut BytesMut,
        client: &mut WriteHalf<MaybeTls>,
    ) -> Result<(), End> {
        let mut out = BytesMut::with_capacity(buf.len() + 256);
        let mut pos = 0;
        while let Some(len) = peek_frame_len(&buf[pos..], MAX_BACKEND_MESSAGE)
            .map_err(|e: CodecError| End::UpstreamProtocol(e.to_string()))?
        {
            let frame = &buf[pos..pos + len];
            let (tag, body) = (frame[0], &frame[5..]);
            if tag == b'S' {
                self.check_parameter(body)?;
            }
            let start = out.len();
            let masked = self.mask_message(tag, body, &mut out).await?;
            // Records describe what the client got: the masked message.
            let observed = match &masked {
                Masked::Replace(m) => self.observe(m[0], &m[5..])?,
                Masked::Appended => self.observe(out[start], &out[start + 5..])?,
                Masked::Keep | Masked::Drop => self.observe(tag, body)?,
            };
            match (observed, masked) {
                (Some(replacement), _) => {
                    out.truncate(start);
                    out.extend_from_slice(&replacement)
                }
                (None, Masked::Replace(replacement)) => out.extend_from_slice(&replacement),
                (None, Masked::Drop | Masked::Appended) => {}
                (None, Masked::Keep) => out.extend_from_slice(frame),
            }
            pos += len;
            if out.len() >= 64 * 1024 {
                write(client, &out).await?;
                out.clear();
            }
        }
        write(client, &out).await?;
        buf.advance(pos);
        Ok(())
    }

    /// What to send for one message; a rewritten DataRow is appended to
    /// `out` directly.
    async fn mask_message(
        &mut self,
        tag: u8,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<Masked, End> {
        let protocol = |e: CodecError| End::UpstreamProtocol(e.to_string());
        Ok(match tag {
            b'T' => {
                let fields = parse_row_description(body).map_err(protocol)?;
                let shape = Arc::new(self.shape_of(&fields).await);
                self.answer_describe(shape)
            }
            b'n' => self.answer_describe(Arc::new(Shape::default())),
            b'D' => {
                let declared =
                    self.rows_need_lineage() && self.reads_declared().await != Some(false);
                self.mask_data_row(body, declared, out).map_err(protocol)?
            }
            b'H' => {
                let declared =
                    self.declares_columns() && self.reads_declared().await != Some(false);
                self.start_copy(body, declared)
            }
            b'd' | b'c' => self.mask_copy(tag, body),
            b'C' => self.end_copy(),
            b'E' | b'N' => {
                let fields = parse_error_fields(body).map_err(protocol)?;
                // The gateway's refusals stand in for these (see `observe`);
                // they name a statement, not data.
                let poison = fields
                    .iter()
                    .any(|(c, v)| *c == b'C' && *v == sqlstate::INVALID_SQL_STATEMENT_NAME);
                let declared =
                    !poison && self.declares_columns() && self.reads_declared().await == Some(true);
                self.mask_error(tag, &fields, declared)
            }
            b'A' => self.mask_notification(body),
            _ => Masked::Keep,
        })
    }

    /// The masking plan of a RowDescription, its fields traced through the
    /// catalog when columns are declared.
    async fn shape_of(&self, fields: &[crate::codec::rows::FieldDescription<'_>]) -> Shape {
        let Some(m) = self.mask.as_ref() else {
            return Shape::default();
        };
        if m.session.rules.columns.is_empty() && m.session.rules.expressions == Expressions::Detect
        {
            // Nothing depends on where a field comes from.
            return m.session.plan(fields, &[]);
        }
        let origins: Vec<_> = fields.iter().map(|f| (f.table_oid, f.column)).collect();
        match self.gw.catalog.resolve(&self.gw.upstream, &origins).await {
            Ok(sources) => m.session.plan(fields, &sources),
            Err(e) => {
                tracing::warn!(session = %self.session_id, error = %e, "catalog lookup failed; masking every field of this result");
                m.session.plan_blind(fields)
            }
        }
    }

    /// A RowDescription or NoData answers the oldest pending Describe, or
    /// else starts a simple query's result set.
    fn answer_describe(&mut self, shape: Arc<Shape>) -> Masked {
        let describe = self.local.iter().position(|e| match e {
            Expect::Describe { .. } => true,
            Expect::Statement(t) => t.whole_query && !t.completed,
            _ => false,
        });
        let Some(m) = self.mask.as_mut() else {
            return Masked::Keep;
        };
        match describe.and_then(|i| match &self.local[i] {
            Expect::Describe { .. } => self.local.remove(i),
            _ => None,
        }) {
            Some(Expect::Describe { portal, swallow }) => {
                if let Some(p) = portal {
                    m.portals.insert(p, shape);
                }
                if swallow {
                    Masked::Drop
                } else {
                    Masked::Keep
                }
            }
            _ => {
                m.current = Some(shape);
                Masked::Keep
            }
        }
    }

    fn declares_columns(&self) -> bool {
        self.mask
            .as_ref()
            .is_some_and(|m| !m.session.rules.columns.is_empty())
    }

    /// Whether the rows now streaming have a computed field whose masking
    /// depends on what the statement reads.
    fn rows_need_lineage(&mut self) -> bool {
        let Some(m) = self
            .mask
            .as_ref()
            .filter(|m| !m.session.rules.columns.is_empty())
        else {
            return false;
        };
        let portal = open_tracker(&mut self.local).and_then(|t| t.portal.as_deref());
        let shape = match portal {
            Some(p) => m.portals.get(p),
            None => m.current.as_ref(),
        };
        shape.is_some_and(|s| s.has_computed())
    }

    /// Whether the statement whose results are streaming may read a
    /// declared column, asking the catalog once per statement when its
    /// text cannot tell; `None` when no statement is streaming. A catalog
    /// that cannot answer counts as "yes".
    async fn reads_declared(&mut self) -> Option<bool> {
        let session = self.mask.as_ref()?.session;
        let t = open_tracker(&mut self.local)?;
        if let Some(known) = t.reads_declared {
            return Some(known);
        }
        let answer = match lineage(&session.rules, t.statement.as_deref()) {
            Lineage::Declared => true,
            Lineage::Clean => false,
            Lineage::Unsure {
                relations,
                functions,
            } => match self
                .gw
                .catalog
                .reach(&self.gw.upstream, &relations, &functions)
                .await
            {
                Ok(reach) => settle(&session.rules, &reach),
                Err(e) => {
                    tracing::warn!(session = %self.session_id, error = %e, "catalog lookup failed; treating the statement as reading masked columns");
                    true
                }
            },
        };
        if let Some(t) = open_tracker(&mut self.local) {
            t.reads_declared = Some(answer);
        }
        Some(answer)
    }

    fn mask_data_row(
        &mut self,
        body: &[u8],
        declared: bool,
        out: &mut BytesMut,
    ) -> Result<Masked, CodecError> {
        let Some(m) = self.mask.as_mut() else {
            return Ok(Masked::Keep);
        };
        // The statement's portal and tally are borrowed field by field
        // next to the mask state, rather than cloned and merged per row.
        let (portal, tally) = match open_tracker(&mut self.local) {
            Some(Tracker { portal, masked, .. }) => (portal.as_deref(), Some(masked)),
            None => (None, None),
        };
        let shape = match portal {
            Some(p) => m.portals.get(p),
            None => m.current.as_ref(),
        };
        let (session, buf) = (m.session, &mut m.buf);
        with_tally(tally, |tally| {
            Ok(match shape {
                Some(shape) if session.is_clean(shape, declared) => Masked::Keep,
                Some(shape) if session.mask_row(shape, declared, body, tally, buf, out)? => {
                    Masked::Appended
                }
                Some(_) => Masked::Keep,
                // Rows the gateway cannot place: nothing of them goes out.
                None => Masked::Replace(session.null_row(body, tally)?),
            })
        })
    }

    /// CopyOutResponse: text and CSV are scanned line by line; binary
    /// cannot be, nor can the output of a statement that may read a
    /// declared column (a view over one), so that is dropped here and ends
    /// in an error.
    fn start_copy(&mut self, body: &[u8], declared: bool) -> Masked {
        let Some(m) = self.mask.as_mut() else {
            return Masked::Keep;
        };
        let refused = if declared {
            Some(DECLARED_COPY)
        } else if body.first() == Some(&1) {
            Some(BINARY_COPY)
        } else {
            None
        };
        if let Some(why) = refused {
            m.copy = CopyOut::Refused(why);
            Masked::Drop
        } else {
            m.copy = CopyOut::Text;
            Masked::Keep
        }
    }

    fn mask_error(&mut self, tag: u8, fields: &[(u8, &str)], declared: bool) -> Masked {
        let Some(m) = self.mask.as_ref() else {
            return Masked::Keep;
        };
        let mut tally = Tally::default();
        let masked = m.session.mask_error(tag, fields, declared, &mut tally);
        self.tally(tally);
        masked.map_or(Masked::Keep, Masked::Replace)
    }

    fn mask_notification(&mut self, body: &[u8]) -> Masked {
        let Some(m) = self.mask.as_ref() else {
            return Masked::Keep;
        };
        let mut tally = Tally::default();
        let masked = m.session.mask_notification(body, &mut tally);
        self.tally(tally);
        masked.map_or(Masked::Keep, Masked::Replace)
    }

    fn mask_copy(&mut self, tag: u8, body: &[u8]) -> Masked {
        let Some(m) = self.mask.as_ref() else {
            return Masked::Keep;
        };
        match (m.copy, tag) {
            (CopyOut::Refused(_), _) => Masked::Drop,
            (CopyOut::Text, b'd') => {
                let mut tally = Tally::default();
                let line = m.session.mask_copy_line(body, &mut tally);
                self.tally(tally);
                match line {
                    Some(line) => {
                        let mut w = crate::codec::Writer::new(BytesMut::new(), b'd');
                        w.bytes(&line);
                        Masked::Replace(w.finish())
                    }
                    None => Masked::Keep,
                }
            }
            _ => Masked::Keep,
        }
    }

    /// CommandComplete: a refused binary COPY ends in an error instead.
    fn end_copy(&mut self) -> Masked {
        let Some(m) = self.mask.as_mut() else {
            return Masked::Keep;
        };
        let CopyOut::Refused(why) = std::mem::replace(&mut m.copy, CopyOut::None) else {
            return Masked::Keep;
        };
        let error = ErrorFields::error(sqlstate::INSUFFICIENT_PRIVILEGE, why)
            .with_hint("Portcullis masks results for this principal; the session is still usable.");
        Masked::Replace(error.encode(BytesMut::new()))
    }

    fn tally(&mut self, tally: Tally) {
        if tally.is_empty() {
            return;
        }
        if let Some(t) = self.current_tracker() {
            t.masked.get_or_insert_with(Default::default).merge(tally);
        }
    }
}

/// Runs `f` on the statement's tally (`slot`; `None` when there is no
/// statement to record it). Counting in place keeps the row path free of
/// a tally per row; a statement gets a tally once something is masked.
fn with_tally<R>(slot: Option<&mut Option<Box<Tally>>>, f: impl FnOnce(&mut Tally) -> R) -> R {
    let Some(slot) = slot else {
        return f(&mut Tally::default());
    };
    if let Some(tally) = slot {
        return f(tally);
    }
    let mut tally = Tally::default();
    let result = f(&mut tally);
    if !tally.is_empty() {
        *slot = Some(Box::new(tally));
    }
    result
}

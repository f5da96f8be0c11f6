//! The request handler: route each query by the split decision, answer from the
//! cache or forward to that route's name-server pool, and record metrics.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;
use hickory_proto::op::{
    DnsRequestOptions, Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::Record;
use hickory_resolver::net::runtime::{Time, TokioRuntimeProvider};
use hickory_resolver::net::{DnsError, DnsHandle, NetError};
use hickory_resolver::{NameServerPool, ResponseCache};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::metrics::{DnsMetrics, Outcome};
use crate::split::{ClusterZones, Route};

/// UDP payload size this resolver advertises in EDNS answers (the DNS flag day value).
const EDNS_PAYLOAD: u16 = 1232;

/// The pools queries are forwarded to, one per route.
pub struct Pools {
    /// The cluster DNS.
    pub cluster: NameServerPool<TokioRuntimeProvider>,
    /// The upstream resolvers.
    pub upstream: NameServerPool<TokioRuntimeProvider>,
}

/// Answers DNS requests by splitting them between the cluster DNS and the upstreams.
pub struct SplitHandler {
    zones: ClusterZones,
    pools: Pools,
    cache: ResponseCache,
    metrics: Arc<DnsMetrics>,
}

/// What a query resolved to: the server's message, or a negative or failed result.
type Resolved = Result<Message, NetError>;

/// The parts of a response built from a [`Resolved`].
struct Answer {
    code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    outcome: Outcome,
}

impl SplitHandler {
    /// A handler over these zones, pools, cache and metrics.
    pub fn new(
        zones: ClusterZones,
        pools: Pools,
        cache: ResponseCache,
        metrics: Arc<DnsMetrics>,
    ) -> Self {
        SplitHandler {
            zones,
            pools,
            cache,
            metrics,
        }
    }

    /// The cached result, or the pool's answer (then cached).
    async fn resolve(&self, route: Route, query: &Query) -> Resolved {
        if let Some(cached) = self.cache.get(query, Instant::now()) {
            self.metrics.record_cache(route, true);
            return cached;
        }
        self.metrics.record_cache(route, false);
        let pool = match route {
            Route::Cluster => &self.pools.cluster,
            Route::Upstream => &self.pools.upstream,
        };
        let result = match pool
            .lookup(query.clone(), DnsRequestOptions::default())
            .next()
            .await
        {
            Some(Ok(response)) => DnsError::from_response(response)
                .map(|r| r.into_message())
                .map_err(NetError::from),
            Some(Err(e)) => Err(e),
            None => Err(NetError::from("no response")),
        };
        // Only answers and negative answers are kept; failures are not cached.
        self.cache
            .insert(query.clone(), result.clone(), Instant::now());
        result
    }
}

/// The response to send for a resolved query.
fn answer(resolved: &Resolved) -> Answer {
    let empty = |code, outcome| Answer {
        code,
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
        outcome,
    };
    match resolved {
        Ok(m) => Answer {
            code: m.metadata.response_code,
            answers: m.answers.clone(),
            authorities: m.authorities.clone(),
            additionals: m.additionals.clone(),
            outcome: Outcome::Answered(m.metadata.response_code),
        },
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
            let mut a = empty(nr.response_code, Outcome::Answered(nr.response_code));
            a.authorities = match (&nr.authorities, &nr.soa) {
                (Some(records), _) => records.to_vec(),
                (None, Some(soa)) => vec![soa.as_ref().clone().into_record_of_rdata()],
                (None, None) => Vec::new(),
            };
            a
        }
        Err(NetError::Dns(DnsError::ResponseCode(code))) => empty(*code, Outcome::Answered(*code)),
        Err(_) => empty(ResponseCode::ServFail, Outcome::Failed),
    }
}

/// Whether the request is exactly one standard query (all this resolver answers).
fn single_query(request: &Request) -> Option<Query> {
    match request.queries.queries() {
        [q] if request.metadata.op_code == OpCode::Query
            && request.metadata.message_type == MessageType::Query =>
        {
            Some(q.original().clone())
        }
        _ => None,
    }
}

#[async_trait::async_trait]
impl RequestHandler for SplitHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let Some(query) = single_query(request) else {
            self.metrics.malformed.inc();
            let code = if request.metadata.op_code == OpCode::Query {
                ResponseCode::FormErr
            } else {
                ResponseCode::NotImp
            };
            let response = builder.error_msg(&request.metadata, code);
            return send(&mut response_handle, response, &request.metadata).await;
        };
        let route = self.zones.route(query.name());
        // Query names are user data: debug level only.
        tracing::debug!(name = %query.name(), qtype = %query.query_type(), zone = route.label(), "query");
        let resolved = self.resolve(route, &query).await;
        let a = answer(&resolved);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = a.code;
        metadata.recursion_available = true;
        let response = builder.build(
            metadata,
            a.answers.iter(),
            a.authorities.iter(),
            std::iter::empty(),
            a.additionals.iter(),
        );
        let info = send(&mut response_handle, response, &request.metadata).await;
        self.metrics
            .record(route, a.outcome, started.elapsed().as_secs_f64());
        info
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "sending DNS response failed");
            let mut metadata = Metadata::response_from_request(request);
            metadata.response_code = ResponseCode::ServFail;
            Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        }
    }
}

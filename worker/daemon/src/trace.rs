//! A no-op OpenTelemetry trace collector.
//!
//! buildctl and buildx forward their client spans to the daemon with
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`. kilnd does
//! not collect traces, but answering `Unimplemented` makes the clients log
//! noise, so Export drains the request and answers an empty
//! `ExportTraceServiceResponse` (zero bytes on the wire). kiln-proto does not
//! carry the OpenTelemetry protos: the service is written by hand over
//! tonic's server helpers with a codec that discards messages.

use bytes::Buf;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// The gRPC service name.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The one method's path.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Client span batches can be large; the daemon's usual limit.
const MAX_MESSAGE: usize = 16 << 20;

/// The no-op TraceService; add it to the server with `add_service`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceService;

impl NamedService for TraceService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for TraceService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            let status = Status::unimplemented(format!("{} is not served", req.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(async move {
            let mut grpc = Grpc::new(DiscardCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(grpc.unary(Export, req).await)
        })
    }
}

/// Export: accepts anything, answers the empty message.
struct Export;

impl UnaryService<()> for Export {
    type Response = ();
    type Future = std::future::Ready<Result<Response<()>, Status>>;

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

/// A codec whose messages carry nothing: decoding skips the bytes,
/// encoding writes none (a valid empty protobuf message of any type).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardCodec;

impl Codec for DiscardCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = DiscardCodec;
    type Decoder = DiscardCodec;

    fn encoder(&mut self) -> Self::Encoder {
        DiscardCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        DiscardCodec
    }
}

impl Encoder for DiscardCodec {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, _item: (), _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for DiscardCodec {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// Calls Export with an empty request on `channel` (for tests).
#[cfg(test)]
pub async fn export(channel: tonic::transport::Channel) -> Result<(), Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .unary(
            Request::new(()),
            http::uri::PathAndQuery::from_static(EXPORT_PATH),
            DiscardCodec,
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tonic::transport::{Endpoint, Server};

    /// A server on one end of an in-memory pipe and a channel on the other.
    async fn pair() -> tonic::transport::Channel {
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            Server::builder()
                .add_service(TraceService)
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server)))
                .await
                .expect("server runs");
        });
        let mut client = Some(client);
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let c = client.take();
                async move {
                    c.map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("one connection only"))
                }
            }))
            .await
            .expect("connect")
    }

    #[tokio::test]
    async fn export_answers_ok_with_an_empty_message() {
        let channel = pair().await;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.expect("ready");
        // A request with some bytes in it (an arbitrary span batch).
        let body = vec![0x0a, 0x03, 0x0a, 0x01, 0x00];
        let resp = client
            .unary(
                Request::new(body),
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                BytesCodec,
            )
            .await
            .expect("Export answers OK");
        assert!(
            resp.into_inner().is_empty(),
            "the response message is empty"
        );
    }

    #[tokio::test]
    async fn other_methods_are_unimplemented() {
        let channel = pair().await;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.expect("ready");
        let err = client
            .unary(
                Request::new(()),
                http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Other",
                ),
                DiscardCodec,
            )
            .await
            .expect_err("unknown method");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }

    /// Sends raw bytes and returns the raw response bytes.
    #[derive(Clone, Copy, Default)]
    struct BytesCodec;

    impl Codec for BytesCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = BytesCodec;
        type Decoder = BytesCodec;
        fn encoder(&mut self) -> Self::Encoder {
            BytesCodec
        }
        fn decoder(&mut self) -> Self::Decoder {
            BytesCodec
        }
    }

    impl Encoder for BytesCodec {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }

    impl Decoder for BytesCodec {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let mut out = vec![0; src.remaining()];
            src.copy_to_slice(&mut out);
            Ok(Some(out))
        }
    }
}

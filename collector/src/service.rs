//! The `otwatch.v1.Ingest` gRPC service as the collector serves it, with a
//! decoder that checks each batch against the limits before decoding it.
//!
//! The generated `IngestServer` decodes with a codec it makes itself, which
//! cannot know the configured limits; this service routes the same method to
//! the same [`Ingest`] implementation, but decodes with [`BatchDecoder`].
//!
//! Promises, for every message on an ingest stream:
//! - at most `limits.max_message_bytes` on the wire, and at most that again
//!   once decompressed (tonic refuses more: `OUT_OF_RANGE` and
//!   `RESOURCE_EXHAUSTED` respectively);
//! - before anything is decoded, its encoding is read for its event and
//!   attribute counts ([`Limits::check_encoded_batch`]), and a batch over
//!   `max_events_per_batch` or `max_attrs` is refused with `INVALID_ARGUMENT`
//!   naming the limit, so decoding allocates at most what the limits allow
//!   however the message was crafted;
//! - an encoding the decoder cannot read is refused with `INVALID_ARGUMENT`
//!   too (it is the agent's input that is wrong, not the collector).

use crate::Collector;
use otwatch_proto::limits::Limits;
use otwatch_proto::v1::ingest_server::{Ingest, SERVICE_NAME};
use otwatch_proto::{Ack, EventBatch};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings,
};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::prost::bytes::Buf;
use tonic_prost::prost::Message;
use tonic_prost::ProstEncoder;

/// The path of the one method, `/otwatch.v1.Ingest/Stream`.
const STREAM_PATH: &str = "/otwatch.v1.Ingest/Stream";

/// The ingest service for tonic's router: [`Collector`] behind the bounded
/// decoder, with the message size limit and the compressions agents use.
#[derive(Clone)]
pub struct IngestService {
    collector: Collector,
    limits: Arc<Limits>,
}

impl IngestService {
    pub(crate) fn new(collector: Collector) -> Self {
        let limits = Arc::new(collector.inner.config.limits.clone());
        IngestService { collector, limits }
    }
}

impl tonic::server::NamedService for IngestService {
    const NAME: &'static str = SERVICE_NAME;
}

/// The `Stream` method, handed to tonic's gRPC machinery.
struct StreamMethod(Collector);

impl tonic::server::StreamingService<EventBatch> for StreamMethod {
    type Response = Ack;
    type ResponseStream = <Collector as Ingest>::StreamStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<EventBatch>>) -> Self::Future {
        let collector = self.0.clone();
        Box::pin(async move { <Collector as Ingest>::stream(&collector, request).await })
    }
}

impl<B> Service<http::Request<B>> for IngestService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != STREAM_PATH {
            return Box::pin(async move {
                Ok(
                    Status::unimplemented("otwatch.v1.Ingest has only the Stream method")
                        .into_http(),
                )
            });
        }
        let method = StreamMethod(self.collector.clone());
        let codec = BatchCodec {
            limits: self.limits.clone(),
        };
        let mut accept = EnabledCompressionEncodings::default();
        accept.enable(CompressionEncoding::Zstd);
        accept.enable(CompressionEncoding::Gzip);
        let max = self.limits.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(method, request).await)
        })
    }
}

/// Acks out as protobuf; batches in through [`BatchDecoder`].
struct BatchCodec {
    limits: Arc<Limits>,
}

impl Codec for BatchCodec {
    type Encode = Ack;
    type Decode = EventBatch;
    type Encoder = ProstEncoder<Ack>;
    type Decoder = BatchDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BatchDecoder {
            limits: self.limits.clone(),
        }
    }
}

/// Decodes an `EventBatch` only once its encoding has passed
/// [`Limits::check_encoded_batch`].
pub struct BatchDecoder {
    limits: Arc<Limits>,
}

impl Decoder for BatchDecoder {
    type Item = EventBatch;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<EventBatch>, Status> {
        let refuse = |e: &dyn std::fmt::Display| Status::invalid_argument(e.to_string());
        let unreadable = |e: tonic_prost::prost::DecodeError| {
            Status::invalid_argument(format!("batch is not a valid EventBatch encoding: {e}"))
        };
        // tonic hands over each message whole in one contiguous buffer;
        // should that change, the message is copied rather than left unchecked.
        if buf.chunk().len() == buf.remaining() {
            self.limits
                .check_encoded_batch(buf.chunk())
                .map_err(|e| refuse(&e))?;
            EventBatch::decode(buf).map(Some).map_err(unreadable)
        } else {
            let message = buf.copy_to_bytes(buf.remaining());
            self.limits
                .check_encoded_batch(&message)
                .map_err(|e| refuse(&e))?;
            EventBatch::decode(message).map(Some).map_err(unreadable)
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

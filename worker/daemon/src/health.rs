//! The standard gRPC health service (`grpc.health.v1.Health`) on every
//! listening address, so load balancers, `grpc_health_probe` and
//! orchestrators can ask kilnd whether it serves.
//!
//! kiln-proto already carries `grpc/health/v1/health.proto` (sessions
//! serve it too), so this is its server side in a few lines rather than the
//! tonic-health crate and its second copy of the generated code.
//!
//! `Check` answers `SERVING` for the whole server (`""`) and for each
//! service kilnd serves, `NOT_SERVING` once shutdown has begun, and
//! `NotFound` for any other service name, as the health protocol says.
//! `Watch` sends the current status and then the change to `NOT_SERVING`
//! at shutdown.

use kiln_proto::health::health_check_response::ServingStatus;
use kiln_proto::health::health_server::Health;
use kiln_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// The services a client may ask about by name.
pub const SERVICES: &[&str] = &[
    "moby.buildkit.v1.Control",
    "moby.buildkit.v1.frontend.LLBBridge",
    "grpc.health.v1.Health",
];

/// The health service; `shutdown` is the daemon's shutdown token.
#[derive(Clone, Debug)]
pub struct HealthService {
    pub shutdown: CancellationToken,
}

impl HealthService {
    fn status(&self, service: &str) -> Result<ServingStatus, Status> {
        if !service.is_empty() && !SERVICES.contains(&service) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        Ok(if self.shutdown.is_cancelled() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        })
    }
}

fn response(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let s = self.status(&request.into_inner().service)?;
        Ok(Response::new(response(s)))
    }

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<BoxStream<HealthCheckResponse>>, Status> {
        let now = self.status(&request.into_inner().service)?;
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            if tx.send(Ok(response(now))).await.is_err() || now == ServingStatus::NotServing {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tx.send(Ok(response(ServingStatus::NotServing))).await;
                }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serving_until_shutdown_and_unknown_services_are_not_found() {
        let h = HealthService {
            shutdown: CancellationToken::new(),
        };
        let check = |name: &str| {
            h.check(Request::new(HealthCheckRequest {
                service: name.to_string(),
            }))
        };
        let whole = check("").await.expect("the server").into_inner();
        assert_eq!(whole.status, ServingStatus::Serving as i32);
        let control = check("moby.buildkit.v1.Control").await.expect("known");
        assert_eq!(control.into_inner().status, ServingStatus::Serving as i32);
        let err = check("no.such.Service").await.expect_err("unknown");
        assert_eq!(err.code(), tonic::Code::NotFound);

        h.shutdown.cancel();
        let after = check("").await.expect("still answers").into_inner();
        assert_eq!(after.status, ServingStatus::NotServing as i32);
    }

    #[tokio::test]
    async fn watch_reports_the_change_at_shutdown() {
        use tokio_stream::StreamExt;
        let h = HealthService {
            shutdown: CancellationToken::new(),
        };
        let mut s = h
            .watch(Request::new(HealthCheckRequest::default()))
            .await
            .expect("watch")
            .into_inner();
        let first = s.next().await.expect("a status").expect("ok");
        assert_eq!(first.status, ServingStatus::Serving as i32);
        h.shutdown.cancel();
        let second = s.next().await.expect("a change").expect("ok");
        assert_eq!(second.status, ServingStatus::NotServing as i32);
    }
}

//! The test-only admin service, `jobmanager.admin.v1.Admin`, served on the client API's listener: arms and disarms
//! the replica's failpoints ([`crate::failpoint`]) for the chaos suite.
//!
//! Invariants: a build without the `failpoints` feature can be asked what it has (`ListFailpoints` says
//! `compiled: false`) but not armed (`SetFailpoint` is FAILED_PRECONDITION, saying how to build one that can); an
//! unknown name is INVALID_ARGUMENT listing the known ones. Every change is logged at warn on the replica.
//!
//! Caveat: no authentication, like the rest of the client API; a failpoint build is for test clusters only.

use tonic::{Request, Response, Status};

use super::admin_pb;
use super::admin_pb::admin_server::{Admin, AdminServer};
use crate::failpoint;

/// The admin service of one replica.
#[derive(Debug, Default)]
pub struct AdminService;

/// The admin service, ready to be added to a tonic server.
pub fn server() -> AdminServer<AdminService> {
    AdminServer::new(AdminService)
}

fn armed() -> Vec<admin_pb::Failpoint> {
    failpoint::armed().into_iter().map(|(name, action)| admin_pb::Failpoint { name, action }).collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn set_failpoint(
        &self,
        request: Request<admin_pb::SetFailpointRequest>,
    ) -> Result<Response<admin_pb::SetFailpointReply>, Status> {
        let request = request.into_inner();
        failpoint::configure(&request.name, &request.action)?;
        Ok(Response::new(admin_pb::SetFailpointReply { armed: armed() }))
    }

    async fn list_failpoints(
        &self,
        _request: Request<admin_pb::ListFailpointsRequest>,
    ) -> Result<Response<admin_pb::ListFailpointsReply>, Status> {
        Ok(Response::new(admin_pb::ListFailpointsReply {
            compiled: failpoint::COMPILED,
            known: failpoint::ALL.iter().map(|n| n.to_string()).collect(),
            armed: armed(),
        }))
    }
}

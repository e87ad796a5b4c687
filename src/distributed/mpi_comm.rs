//! [`Comm`] over MPI (the `mpi` crate, rsmpi): MPI_Allreduce with MPI_SUM on MPI_COMM_WORLD.
use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::Comm;

pub struct MpiComm {
    world: SimpleCommunicator,
    recv32: Vec<f32>,
    recv64: Vec<f64>,
    /// Dropping it finalizes MPI; it outlives `world`.
    _universe: Universe,
}

impl MpiComm {
    pub fn init() -> Result<MpiComm> {
        let Some(universe) = mpi::initialize() else { bail!("MPI was initialized already in this process") };
        let world = universe.world();
        Ok(MpiComm { world, recv32: Vec::new(), recv64: Vec::new(), _universe: universe })
    }
}

impl Comm for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        // rsmpi has no MPI_IN_PLACE: a receive buffer kept between calls
        self.recv32.resize(buf.len(), 0.0);
        self.world.all_reduce_into(&buf[..], &mut self.recv32[..], SystemOperation::sum());
        buf.copy_from_slice(&self.recv32);
        Ok(())
    }

    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.recv64.resize(buf.len(), 0.0);
        self.world.all_reduce_into(&buf[..], &mut self.recv64[..], SystemOperation::sum());
        buf.copy_from_slice(&self.recv64);
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

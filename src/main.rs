/// mimalloc: tract allocates and frees large buffers every run; glibc's malloc returns them to the
/// OS and faults them in again (BACKEND-NOTES.md measured up to 2× on some graphs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(onnxsam::cli::main());
}

fn main() {
    std::process::exit(onnxsam::cli::main());
}

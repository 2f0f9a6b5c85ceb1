fn main() {
    std::process::exit(alipay_sidecar::cli::main());
}

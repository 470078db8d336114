fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/jobs.proto");
    if std::env::var_os("CARGO_FEATURE_JOBS_API").is_some() {
        tonic_prost_build::configure().compile_protos(&["proto/jobs.proto"], &["proto"])?;
    }
    Ok(())
}

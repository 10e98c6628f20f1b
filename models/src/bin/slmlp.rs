//! slmlp: supervised pretraining with and without the MLP projector (SL vs
//! SL-MLP), transfer, feature analysis, layer-by-layer inspection and Mask
//! R-CNN detection. The commands live in `models::cli`.

fn main() -> std::process::ExitCode {
    models::cli::main()
}

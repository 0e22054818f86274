//! The node binary: parse the configuration, install logging and signal handling, run the library.

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let config = node::config::Config::parse();
    if let Err(problem) = config.validate() {
        eprintln!("error: {problem}");
        return std::process::ExitCode::from(2);
    }
    node::observe::logging::install(config.log_format, &config.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        node::shutdown::on_signals(shutdown.clone())
            .map_err(|error| node::error::Error::io("installing signal handlers", error))?;
        node::run(config, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "node stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

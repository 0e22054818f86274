//! The node binary: parse the configuration, install logging and signal handling, run the library (or, for
//! `node migrate`, apply the migrations and exit).

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let config = node::config::Config::parse();
    let validated = match config.command {
        Some(node::config::Command::Migrate) => config
            .validate_migrate()
            .map_err(node::error::Error::Config),
        None => config.validate(),
    };
    if let Err(problem) = validated {
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
        if config.command == Some(node::config::Command::Migrate) {
            let applied = node::migrate(&config).await?;
            tracing::info!(applied, "migrations applied; the schema is current");
            return Ok(());
        }
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

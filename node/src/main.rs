//! The node binary: parse the configuration, install logging and signal handling, run the library (or, for
//! `node migrate`, apply the migrations and exit; for `node media import`, copy an old media folder into the
//! configured store, print the counts and exit 1 if any file did not match its record).

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let config = node::config::Config::parse();
    let validated = match &config.command {
        Some(node::config::Command::Migrate) => config
            .validate_migrate()
            .map_err(node::error::Error::Config),
        Some(node::config::Command::Media(_)) => {
            config.validate_media().map_err(node::error::Error::Config)
        }
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
    let mut mismatched = false;
    let result = runtime.block_on(async {
        match &config.command {
            Some(node::config::Command::Migrate) => {
                let applied = node::migrate(&config).await?;
                tracing::info!(applied, "migrations applied; the schema is current");
                return Ok(());
            }
            Some(node::config::Command::Media(node::config::MediaCommand::Import { from })) => {
                let counts = node::media_import(&config, from).await?;
                tracing::info!(
                    imported = counts.imported,
                    present = counts.present,
                    missing = counts.missing,
                    mismatched = counts.mismatched,
                    thumbnails = counts.thumbnails,
                    "media import done"
                );
                println!(
                    "media import: imported={} present={} missing={} mismatched={} thumbnails={}",
                    counts.imported,
                    counts.present,
                    counts.missing,
                    counts.mismatched,
                    counts.thumbnails
                );
                mismatched = counts.mismatched > 0;
                return Ok(());
            }
            None => {}
        }
        let shutdown = CancellationToken::new();
        node::shutdown::on_signals(shutdown.clone())
            .map_err(|error| node::error::Error::io("installing signal handlers", error))?;
        node::run(config, shutdown).await
    });
    match result {
        Ok(()) if mismatched => std::process::ExitCode::FAILURE,
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "node stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

// Vite's asset imports: `?url` gives the URL of a file emitted with the build.
/// <reference types="vite/client" />

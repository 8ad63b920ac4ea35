"""What api/ and worker/ both need: settings, DB, job spec, storage, torch-free parsing."""

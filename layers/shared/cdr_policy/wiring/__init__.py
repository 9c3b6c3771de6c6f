"""Where the stages get their ports: ``cloud`` for the Lambda functions (S3, SQS, KMS, Secrets
Manager, from the validated ``Settings``) and ``local`` for the CLI (a state folder, files, the
environment). Both call the same stage functions."""

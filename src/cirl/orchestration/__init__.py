"""Running the stages: the CLI, the KFP tasks behind the components, and the local runners
(subprocess and container)."""

//! One handler per AWS provisioning API (`run_instances`, `ec2_fleet`, `spot_fleet`, `asg`), what
//! the fleet APIs share (`fleet`: offerings and what a describe says), the operator's launch
//! templates (`launch_template`) and template validation (`validate`). Depends on `calls` only.

pub mod asg;
pub mod ec2_fleet;
pub mod fleet;
pub mod launch_template;
pub mod run_instances;
pub mod spot_fleet;
pub mod validate;

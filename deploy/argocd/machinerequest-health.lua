-- Argo CD health of an orb.dev MachineRequest, read from the conditions the operator keeps
-- (kstatus-style: Ready, Stalled, Reconciling, each with observedGeneration) and its phase.
local hs = {}
local function condition(status, kind)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end
local status = obj.status
if status == nil or status.observedGeneration == nil
    or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe this generation"
  return hs
end
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local message = (ready ~= nil and ready.message) or ""
if status.phase == "Fulfilled" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
elseif status.phase == "Failed" or status.phase == "Partial"
    or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  if stalled ~= nil and stalled.status == "True" and stalled.message ~= nil then message = stalled.message end
else
  hs.status = "Progressing"
end
hs.message = message
return hs

-- Argo CD health of an orb.dev MachineTemplate: Healthy once validated at its current
-- generation; Degraded when only an edit can help (Stalled: invalid spec, unknown provider,
-- missing permissions); Progressing while it is being validated.
local hs = {}
local status = obj.status
local ready, stalled = nil, nil
if status ~= nil and status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then ready = c end
    if c.type == "Stalled" then stalled = c end
  end
end
if ready == nil or ready.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to validate this generation"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = ready.message
else
  hs.status = "Progressing"
  hs.message = ready.message
end
return hs

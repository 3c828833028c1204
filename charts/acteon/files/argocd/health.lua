-- Argo CD health check for the Acteon custom resources (Rule, Provider, Chain, StateMachine,
-- Quota). Reads the operator's status: Healthy once the current generation is served by every
-- gateway, Degraded when the operator rejected it (the reason says why), Progressing otherwise.
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Acteon operator to validate this object"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Acteon operator to observe generation " .. tostring(generation)
  return hs
end
local accepted = nil
local ready = nil
for _, condition in ipairs(status.conditions) do
  if condition.type == "Accepted" then
    accepted = condition
  elseif condition.type == "Ready" then
    ready = condition
  end
end
local function describe(condition)
  return tostring(condition.reason) .. ": " .. tostring(condition.message)
end
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(accepted)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif ready ~= nil then
  hs.status = "Progressing"
  hs.message = describe(ready)
else
  hs.status = "Progressing"
  hs.message = "Waiting for the Acteon operator to report readiness"
end
return hs

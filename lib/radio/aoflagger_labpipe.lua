--[[
 labpipe's AOFlagger strategy for the array and antenna images of labpipe.radio.flagging.

 Its input is already a residual: the high-passed, autocorrelation-normalised power averaged over
 baselines, divided by a smooth model in time and frequency, as rms amplitude minus one. So the
 generic strategy's iterative high-pass fit is not needed here (over 24 integrations it leaves the
 sky's drift through the beam above the tiny noise of an average over thousands of baselines);
 what remains of it: SumThreshold in time and frequency, then the scale-invariant rank operator
 (a little, to take the faint edges of what was found), then whole timesteps with outlying rms.
 Copy and edit it, and point flagging.strategy at the copy, to tune it.
]]

aoflagger.require_min_version("3.0")

function execute(input)
  local base_threshold = 1.5 -- in units of the image's noise, as AOFlagger scales it
  local sir_eta = 0.1 -- 0: no extension of flagged regions; AOFlagger's generic strategy uses 0.2
  local timestep_threshold = 4.0

  local copy_of_input = input:copy()
  for _, polarization in ipairs(input:get_polarizations()) do
    local data = input:convert_to_polarization(polarization):convert_to_complex("amplitude")
    local original = data:copy()
    aoflagger.sumthreshold_masked(data, original, base_threshold, base_threshold, true, true)
    data:join_mask(original)
    input:set_polarization_data(polarization, data)
  end
  aoflagger.scale_invariant_rank_operator_masked(input, copy_of_input, sir_eta, sir_eta)
  aoflagger.threshold_timestep_rms(input, timestep_threshold)
  input:flag_nans()
end

"""The intermediate representation every analysis stage shares, below graph/ and rules/.

`abstract`: what the analysis knows about one tensor (an id per channel, data dims of size 1);
`unify`: the id space, where rules union ids that must be pruned together and block ids with a
`reasons.Reason`, solved once into components; `roles`: how a parameter axis takes part in a group.
"""
